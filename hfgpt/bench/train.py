"""python -m hfgpt.bench train: the real training step of a recipe, timed after a warm-up.

    python -m hfgpt.bench train recipes/shakespeare_char_cpu.yaml
    python -m hfgpt.bench train recipes/shakespeare_char.yaml --steps=50 --warmup=10 --json=bench-train.json
    python -m hfgpt.bench train recipes/shakespeare_char_cpu.yaml --nanogpt=../nanoGPT --pairs=10 --steps=20

The run is built exactly as python -m hfgpt.train builds it (hfgpt.training.run.setup) and each
step is its train_step. Printed and written as JSON: ms_per_iter (median over the timed steps),
tokens_per_sec, mfu (null where the device's peak FLOPS is unknown, e.g. CPUs), peak_memory_mb
(CUDA: the most allocated; CPU: the process's peak RSS), device, mixed_precision, compiled,
tokens_per_iter, params. Any recipe key can be overridden with --key=value.

With --nanogpt=DIR (a clone of nanoGPT) the same process also builds nanoGPT's own GPT and
AdamW (its model.py and configure_optimizers, same recipe numbers) and times blocks of --steps
iterations of each in turn, --pairs times, swapping which goes first: this machine's speed drifts
by 20% from minute to minute, and alternating blocks in one process is what makes the ratio
stable. Both draw the same batches from the recipe's data; nanoGPT's step is its train.py's
(forward with targets, backward per micro-batch, clip, step), with its train.py's precision and
compile on this device (nanogpt_step). The JSON lists every pair and the median ratio
hfgpt / nanoGPT. On a GPU, python -m hfgpt.bench gpu runs nanoGPT's own bench.py beside hfgpt.
"""

import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hfgpt.bench import cpu_name, nanogpt_classes, report
from hfgpt.config import Command, Parsed, Recipe, command, option
from hfgpt.core.errors import UserError


@dataclass
class BenchTrainOptions:
    steps: int = option(30, min=1)
    """Timed training steps (with --nanogpt: steps per block of each side)."""
    warmup: int = option(5, min=0)
    """Untimed steps first (compilation, allocator warm-up)."""
    nanogpt: str | None = option(None)
    """A nanoGPT clone: time its GPT and AdamW beside hfgpt's, in alternating blocks."""
    pairs: int = option(10, min=1)
    """With --nanogpt: alternating pairs of blocks."""
    json: str | None = option(None)
    """Write the result here as JSON."""


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def bench_step(recipe: Recipe, steps: int, warmup: int) -> dict:
    """Median time of the recipe's training step, on this process's device."""
    import torch

    from hfgpt.training.mfu import mfu
    from hfgpt.training.run import make_accelerator, setup, stepper

    accelerator = make_accelerator(recipe)
    run = setup(recipe, accelerator)
    sync = torch.cuda.synchronize if accelerator.device.type == "cuda" else (lambda: None)
    step = stepper(run, recipe.optim.grad_clip)
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        step().item()  # the step is done when its loss is known
        if i >= warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens_per_sec = run.tokens_per_iter / seconds
    world = accelerator.num_processes
    utilization = mfu(run.flops_per_token, tokens_per_sec, run.peak_flops and run.peak_flops * world)
    return {
        "ms_per_iter": round(seconds * 1000, 3),
        "tokens_per_sec": round(tokens_per_sec, 1),
        "mfu": round(utilization, 4) if utilization is not None else None,
        "peak_memory_mb": round(peak_memory_mb(accelerator.device), 1),
        "device": torch.cuda.get_device_name() if accelerator.device.type == "cuda" else accelerator.device.type,
        "processes": world,
        "mixed_precision": accelerator.mixed_precision,
        "compiled": run.compiled,
        "tokens_per_iter": run.tokens_per_iter,
        "params": run.n_params,
        "steps": steps,
        "warmup": warmup,
    }


# --- side by side with nanoGPT ------------------------------------------------------------------

def nanogpt_step(recipe: Recipe, repo: Path, vocab_size: int, device):
    """nanoGPT's own GPT and configure_optimizers, imported from its clone, run as its train.py runs
    them on this device (forward with targets, backward per micro-batch, clip, AdamW): on CUDA under
    autocast in bf16, or fp16 with a GradScaler where torch.cuda.is_bf16_supported() says no (its
    test, which counts emulated bf16 as supported), and torch.compile'd when the recipe compiles
    hfgpt's side (nanoGPT's default on GPUs); on the CPU in float32, as its train.py always is there.
    Returns step(x, y)."""
    from contextlib import nullcontext

    import torch

    from hfgpt.core.device import should_compile

    GPT, GPTConfig = nanogpt_classes(repo)
    m, o = recipe.model, recipe.optim
    model = GPT(GPTConfig(block_size=m.block_size, vocab_size=vocab_size, n_layer=m.n_layer, n_head=m.n_head,
                          n_embd=m.n_embd, dropout=m.dropout, bias=m.bias)).to(device)
    optimizer = model.configure_optimizers(o.weight_decay, o.learning_rate, (o.beta1, o.beta2), device.type)
    if should_compile(recipe.system.compile, device.type):
        model = torch.compile(model)
    dtype = None
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    context = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    accum = recipe.train.gradient_accumulation_steps

    def step(x, y):
        for _ in range(accum):
            with context:
                _, loss = model(x.contiguous().to(device), y.contiguous().to(device))
            scaler.scale(loss / accum).backward()
        if o.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def compare(recipe: Recipe, nanogpt: str, pairs: int, steps: int, warmup: int) -> dict:
    """Alternating blocks of `steps` iterations of hfgpt's train_step and of nanoGPT's step, in one
    process, on the same batches' shapes: machine-speed drift hits both sides alike."""
    import torch

    from hfgpt.training.run import make_accelerator, setup, stepper

    repo = Path(nanogpt)
    m = recipe.model
    if m.init_from != "scratch" or m.architecture != "gpt2":
        what = f"architecture={m.architecture}" if m.init_from == "scratch" else f"init_from={m.init_from}"
        raise UserError(f"--nanogpt times nanoGPT's GPT-2 block of the recipe's shape beside hfgpt's, but the recipe has "
                        f"{what}: compare a recipe with init_from: scratch and architecture: gpt2 (or drop --nanogpt)")
    nanogpt_classes(repo)  # a wrong folder fails before the run is built
    accelerator = make_accelerator(recipe)
    if accelerator.num_processes > 1:
        raise UserError("--nanogpt compares single processes: run it with python, not accelerate launch")
    run = setup(recipe, accelerator)
    nano = nanogpt_step(recipe, repo, run.meta["vocab_size"], accelerator.device)
    sync = torch.cuda.synchronize if accelerator.device.type == "cuda" else (lambda: None)
    ours = stepper(run, recipe.optim.grad_clip)

    def theirs():
        loss = None
        for _ in range(run.accum):
            xb, yb = run.batches.next_batch()
            loss = nano(xb, yb)
        return loss

    def block(step) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        loss.item()
        return run.tokens_per_iter * steps / (time.perf_counter() - start)

    for step in (ours, theirs):  # warm-up (and compilation) outside the timed blocks
        for _ in range(warmup):
            step().item()
    results = []
    for pair in range(pairs):
        first, second = (ours, theirs) if pair % 2 == 0 else (theirs, ours)  # alternate which goes first
        rates = {first: block(first), second: block(second)}
        h, n = rates[ours], rates[theirs]
        results.append({"first": "hfgpt" if first is ours else "nanogpt", "hfgpt_tokens_per_sec": round(h, 1),
                        "nanogpt_tokens_per_sec": round(n, 1), "ratio": round(h / n, 3)})
        print(f"pair {pair + 1}: hfgpt {h:,.0f} tokens/s, nanoGPT {n:,.0f} tokens/s, ratio {h / n:.3f}")
    return {"pairs": results, "median_ratio": statistics.median(r["ratio"] for r in results),
            "hfgpt_median_tokens_per_sec": statistics.median(r["hfgpt_tokens_per_sec"] for r in results),
            "nanogpt_median_tokens_per_sec": statistics.median(r["nanogpt_tokens_per_sec"] for r in results),
            "steps_per_block": steps, "compiled": run.compiled, "device": accelerator.device.type,
            "mixed_precision": accelerator.mixed_precision, "cpu": cpu_name()}


@command(Command("bench train", __doc__.split("\n\n")[0], options=BenchTrainOptions, recipe_step="train"))
def main(parsed: Parsed) -> int:
    o = parsed.options
    if o.nanogpt:
        result = compare(parsed.recipe, o.nanogpt, o.pairs, o.steps, o.warmup)
    else:
        result = bench_step(parsed.recipe, o.steps, o.warmup)
    report(result, o.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
