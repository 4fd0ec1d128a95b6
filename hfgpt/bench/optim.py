"""python -m hfgpt.bench optim: what one optimizer step costs the host, for a GPT-2 shape.

    python -m hfgpt.bench optim --optimizer=muon                  # GPT-2 124M's shape on meta tensors
    python -m hfgpt.bench optim --optimizer=muon --device=cuda --json=bench-optim.json
    python -m hfgpt.bench optim --optimizer=muon --n_layer=2 --n_embd=64 --device=cpu --steps=5

Builds a GPT2LMHeadModel of the recipe's shape (n_layer, n_head, n_embd, block_size; the vocabulary
padded as a new model's, --vocab_size) on --device with random gradients, and steps hfgpt's optimizer
(make_optimizer: the recipe's optimizer) and, for Muon, torch.optim.Muon with
the same settings on a copy of the same matrices. Per step it reports the ATen ops dispatched
(counted with a TorchDispatchMode, so views and foreach ops count once each) and the host time: the
process's CPU seconds during step() (on CUDA, the wall time of the step() call, which returns when
its kernels are queued; device_ms adds the wait for them). On the meta device nothing is computed:
all of the time is Python and the dispatcher, the part that makes a GPU wait. The Muon side also
reports how far hfgpt's matrices are from torch's after the steps (0.0 where bitwise equal).
AdamW's part (embeddings, norms, biases) is timed on cpu and cuda only (fused AdamW needs a real device).
"""

import sys
import time
from collections import Counter
from dataclasses import dataclass

from hfgpt.bench import cpu_name, report
from hfgpt.config import Command, Parsed, command, option


@dataclass
class BenchOptimOptions:
    device: str = option("meta", choices=("meta", "cpu", "cuda"))
    """Where the tensors live: meta (no compute: host time alone), cpu or cuda."""
    vocab_size: int = option(50257, min=2)
    """The tokenizer's vocabulary (GPT-2's 50,257, padded to 50,304 as build_model pads it)."""
    steps: int = option(10, min=1)
    """Timed steps (after one untimed step that creates the optimizer's state)."""
    json: str | None = option(None)
    """Write the result here as JSON."""


def counted_ops(step) -> Counter:
    """The ATen ops one call of step() dispatches, by name."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket.__name__)] += 1
            return func(*args, **(kwargs or {}))

    with Count() as count:
        step()
    return count.ops


def timed(step, steps: int, device: str) -> dict:
    """Host ms per step (CPU time of the process; on CUDA the wall time of the call) and, on CUDA,
    device_ms: the wall time until its kernels are done."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    host = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        host += (time.perf_counter() - t0) if device == "cuda" else (time.process_time() - c0)
    sync()
    result = {"host_ms": round(1000 * host / steps, 3)}
    if device == "cuda":
        result["device_ms"] = round(1000 * (time.perf_counter() - start) / steps, 3)
    return result


def side(step, steps: int, device: str) -> dict:
    ops = counted_ops(step)
    return {"ops_per_step": sum(ops.values()), **timed(step, steps, device),
            "top_ops": dict(ops.most_common(6))}


@command(Command("bench optim", __doc__.split("\n\n")[0], options=BenchOptimOptions, recipe_step="train"))
def main(parsed: Parsed) -> int:
    import torch

    from hfgpt.model.families.gpt2 import gpt2_config
    from hfgpt.model.gpt import padded_vocab_size
    from hfgpt.training.optim import make_optimizer
    from transformers import GPT2LMHeadModel

    o, r = parsed.options, parsed.recipe
    m = r.model
    config = gpt2_config(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size, dropout=0.0,
                         vocab_size=padded_vocab_size(o.vocab_size))
    device = torch.device(o.device)
    with device:
        model = GPT2LMHeadModel(config)
    generator = torch.Generator(device="cpu").manual_seed(0)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=generator).to(device) if o.device != "meta" else torch.empty_like(p))
    optimizer = make_optimizer(model, r.optim, o.device)  # fused AdamW on cpu and cuda, as training has it
    result = {"optimizer": r.optim.optimizer, "shape": [m.n_layer, m.n_head, m.n_embd], "device": o.device,
              "params": sum(p.numel() for p in model.parameters()), "steps": o.steps,
              "cpu": cpu_name(), "torch": torch.__version__}
    parts = {"muon": optimizer.muon, "adamw": optimizer.adamw} if r.optim.optimizer == "muon" else {"adamw": optimizer}
    if "muon" in parts:  # torch's Muon on copies of the same matrices, given the same gradients
        group = optimizer.muon.param_groups[0]
        theirs = [p.detach().clone() for p in group["params"]]
        for p, q in zip(group["params"], theirs):
            q.grad = p.grad
        parts["torch_muon"] = torch.optim.Muon(theirs, **{k: group[k] for k in (
            "lr", "momentum", "weight_decay", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn")})
    for name, part in parts.items():
        if name == "adamw" and o.device == "meta":
            continue  # fused AdamW runs on real devices only: timing its loop here would mean nothing
        part.step()  # the state is made
        result[name] = side(part.step, o.steps, o.device)  # every side takes the same 1 + 1 + steps steps
    if "muon" in parts:
        result["ops_ratio"] = round(result["torch_muon"]["ops_per_step"] / result["muon"]["ops_per_step"], 1)
        if o.device != "meta":
            result["muon_vs_torch_max_abs_diff"] = max((p - q).abs().max().item() for p, q in zip(
                optimizer.muon.param_groups[0]["params"], parts["torch_muon"].param_groups[0]["params"]))
    report(result, o.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
