"""python -m hfgpt.bench finetune: peak memory and time of a fine-tuning step, full, with gradient
checkpointing, and LoRA, on a real GPT-2 configuration.

    python -m hfgpt.bench finetune                                       # gpt2-medium, one 512-token window, CPU
    python -m hfgpt.bench finetune --model=gpt2-xl --block_size=1024 --batch_size=4 --device=cuda --mixed_precision=bf16
    python -m hfgpt.bench finetune --modes=lora --lora_r=16 --steps=5 --json=finetune.json

The model has the named GPT-2's exact configuration (layers, width, heads, 50,257 ids, gelu_new)
with random weights, so nothing is downloaded; it is cropped to block_size as a fine-tune crops
it. Each mode runs in a fresh process, so that its peak memory is its own, and builds its model
with hfgpt's own pieces (enable_checkpointing, add_lora, make_optimizer, lm_loss): full trains
every weight; checkpointing adds gradient_checkpointing; lora trains peft adapters (lora_r,
lora_alpha, lora_dropout on GPT-2's c_attn, c_proj, c_fc). A step is forward, backward, clip,
AdamW step. Reported per mode: s_per_iter (median over --steps after --warmup), cpu_s_per_iter
(CPU time of all threads: on a shared machine steadier than wall time), peak_memory_mb (CUDA: most
allocated; CPU: the process's resident set high-water mark during the steps, model and optimizer
included), trainable and total parameters. On the CPU the children run with
MALLOC_MMAP_THRESHOLD_=--mmap_threshold: with glibc's default, freed activations stay in malloc's
heaps and the resident set overstates the live tensors by GBs (0 keeps glibc's default).
"""

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from hfgpt.bench import child_env, cpu_name, report
from hfgpt.config import Command, Parsed, command, option
from hfgpt.core.errors import UserError

GPT2_SHAPES = {  # the configs of openai-community/gpt2*: (n_layer, n_embd, n_head)
    "gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20), "gpt2-xl": (48, 1600, 25),
}
MODES = ("full", "checkpointing", "lora")


@dataclass
class BenchFinetuneOptions:
    model: str = option("gpt2-medium", choices=tuple(GPT2_SHAPES))
    """Whose configuration the model has (random weights, nothing downloaded)."""
    n_layer: int | None = option(None, min=1)
    """Override the model's layers (a quick check on a small model)."""
    n_embd: int | None = option(None, min=1)
    """Override the model's width."""
    n_head: int | None = option(None, min=1)
    """Override the model's heads."""
    modes: str = option(",".join(MODES))
    """Comma-separated: full, checkpointing (full + gradient_checkpointing), lora."""
    block_size: int = option(512, min=1, max=1024)
    """Tokens per window."""
    batch_size: int = option(1, min=1)
    """Windows per step."""
    lora_r: int = option(8, min=1)
    """LoRA rank of the lora mode."""
    lora_alpha: float = option(16.0, above=0)
    """LoRA scaling numerator."""
    lora_dropout: float = option(0.05, min=0, below=1)
    """Dropout on the adapters' input."""
    steps: int = option(3, min=1)
    """Timed steps per mode."""
    warmup: int = option(1, min=0)
    """Untimed steps first (AdamW allocates its moments in the first)."""
    device: str = option("cpu", choices=("cpu", "cuda"))
    """Where the steps run."""
    mixed_precision: str = option("no", choices=("no", "bf16", "fp16"))
    """Autocast dtype of the forward; the weights stay float32."""
    mmap_threshold: int = option(131072, min=0)
    """CPU: glibc's MALLOC_MMAP_THRESHOLD_ for each mode's process; 0 keeps glibc's default."""
    one: str | None = option(None, choices=MODES)
    """Run this one mode in this process (what each child does)."""
    json: str | None = option(None)
    """Write the result here as JSON."""


def memory_probe(device):
    """(reset, peak_mb): the device's peak memory since the last reset, in MiB."""
    import torch

    if device.type == "cuda":
        return (lambda: torch.cuda.reset_peak_memory_stats(device)), lambda: torch.cuda.max_memory_allocated(device) / 2**20

    def reset():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM back to the current resident set (Linux 4.0+)

    def peak():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))

    return reset, peak


def run_mode(o: BenchFinetuneOptions, mode: str) -> dict:
    """Build the model of one mode and time its steps, in this process."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from hfgpt.config import ModelConfig, OptimConfig
    from hfgpt.model.gpt import crop_block_size, enable_checkpointing, lm_loss
    from hfgpt.model.lora import add_lora
    from hfgpt.training.optim import make_optimizer

    n_layer, n_embd, n_head = GPT2_SHAPES[o.model]
    device = torch.device(o.device)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=o.n_layer or n_layer, n_embd=o.n_embd or n_embd, n_head=o.n_head or n_head,
                        vocab_size=50257, n_positions=1024, activation_function="gelu_new")
    model = GPT2LMHeadModel(config)
    crop_block_size(model, o.block_size)
    if mode == "checkpointing":
        enable_checkpointing(model)
    if mode == "lora":
        model = add_lora(model, ModelConfig(lora_r=o.lora_r, lora_alpha=o.lora_alpha, lora_dropout=o.lora_dropout))
    model.to(device).train()
    optimizer = make_optimizer(model, OptimConfig(learning_rate=3e-5), device.type)
    params = [p for p in model.parameters() if p.requires_grad]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(o.mixed_precision)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    reset, peak = memory_probe(device)
    g = torch.Generator().manual_seed(0)
    reset()
    times, cpu = [], []
    for i in range(o.warmup + o.steps):
        x, y = torch.randint(0, 50257, (2, o.batch_size, o.block_size), generator=g).to(device)
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = lm_loss(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if i >= o.warmup:
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {"mode": mode, "s_per_iter": round(statistics.median(times), 3),
            "cpu_s_per_iter": round(statistics.median(cpu), 3), "peak_memory_mb": round(peak()),
            "trainable_params": sum(p.numel() for p in params), "params": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads()}


@command(Command("bench finetune", __doc__.split("\n\n")[0], options=BenchFinetuneOptions))
def main(parsed: Parsed) -> int:
    o = parsed.options
    if o.one:
        print(json.dumps(run_mode(o, o.one)))
        return 0
    modes = [m.strip() for m in o.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise UserError(f"--modes={o.modes}: choose from {', '.join(MODES)}, comma-separated")
    env = child_env(**({"MALLOC_MMAP_THRESHOLD_": str(o.mmap_threshold)} if o.device == "cpu" and o.mmap_threshold else {}))
    own = [f"--{k}={v}" for k, v in vars(o).items() if v is not None and k not in ("one", "json", "modes")]
    rows = []
    load = os.getloadavg()[0]
    for mode in modes:
        child = subprocess.run([sys.executable, "-m", "hfgpt.bench.finetune", *own, f"--one={mode}"],
                               capture_output=True, text=True, env=env)
        if child.returncode:
            raise UserError(f"bench finetune: mode {mode} failed: {child.stderr.strip().splitlines()[-1:]}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{mode:14s} {r['s_per_iter']:8.2f} s/iter ({r['cpu_s_per_iter']:.1f} CPU s)  peak memory "
              f"{r['peak_memory_mb']:,} MB  trainable {r['trainable_params']:,} of {r['params']:,}", flush=True)
    shape = [o.n_layer or GPT2_SHAPES[o.model][0], o.n_embd or GPT2_SHAPES[o.model][1], o.n_head or GPT2_SHAPES[o.model][2]]
    report({"model": o.model, "n_layer_n_embd_n_head": shape, "block_size": o.block_size, "batch_size": o.batch_size, "device": o.device,
            "mixed_precision": o.mixed_precision, "cpu": cpu_name(), "load_average_1min": [round(load, 2),
            round(os.getloadavg()[0], 2)], "malloc_mmap_threshold": env.get("MALLOC_MMAP_THRESHOLD_"),
            "modes": rows}, o.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
