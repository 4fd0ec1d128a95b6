"""python -m hfgpt.bench gpu: hfgpt beside nanoGPT's own bench.py on one CUDA GPU, GPT-2 124M.

    python -m hfgpt.bench gpu --nanogpt=../nanoGPT --json=bench-gpu.json
    python -m hfgpt.bench gpu --steps=20 --warmup=10 --fp16=false       # hfgpt alone, its auto precision only
    python -m hfgpt.bench gpu --nanogpt=../nanoGPT --dry_run=true       # any machine: the command runs, nothing measured

nanoGPT runs as its README benchmarks it: `python bench.py --real_data=False --compile=True
--dtype=D` in its folder, in a subprocess (GPT-2 124M, 12 x 1024 tokens a step, bias False, dropout
0, AdamW lr 1e-4, weight decay 1e-2, betas 0.9/0.95, no clipping; 10 burn-in and 20 timed steps, the
loss read on the host every step). Its "time per iteration" and MFU are read from its output; its
MFU is against an A100's 312 TFLOPS whatever the GPU (model.py's estimate_mfu), so it is also
given against this GPU's peak. D is bfloat16 where hfgpt's auto precision picks bf16, else float16.

hfgpt: the same model and optimizer numbers, built by hfgpt (build_model: GPT-2's 50257 ids padded
to 50304, as nanoGPT's), prepared as python -m hfgpt.train prepares it (prepare_training: the
training attention, NextTokenLoss compiled whole, fused AdamW, accelerate's mixed precision) and
stepped by its train_step on random tokens drawn by hfgpt's Batches: each step draws and copies its
batch, where bench.py reuses one batch on the device. The same timing as bench.py: --warmup steps,
then --steps steps timed together, the loss read on the host every step.

Both sides are profiled for a few steps and the attention kernels that ran are named (flash, cudnn,
memory-efficient, math). With --fp16 (the default) hfgpt is timed again in fp16, with accelerate's
GradScaler. Prints and (--json) writes one JSON object. --nanogpt_kernels=false leaves out the
profile of nanoGPT's model (it compiles that model once more, in this process: ~40 s on an H100).
--dry_run runs every part on the CPU at its smallest (a 1-layer 32-wide model, nanoGPT's bench.py
on 16 tokens with its model made as small, no compile, no profile): scripts/gpu_check.sh's dry run,
which checks commands, not speed.
"""

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hfgpt.bench import nanogpt_classes, report
from hfgpt.config import Command, Parsed, command, option
from hfgpt.core.errors import UserError

# nanoGPT bench.py's run, as recipe keys (the recipe's defaults are GPT-2 124M's shape)
BENCH_RECIPE = {"batch_size": 12, "block_size": 1024, "gradient_accumulation_steps": 1, "bias": False, "dropout": 0.0,
                "learning_rate": 1e-4, "weight_decay": 1e-2, "beta1": 0.9, "beta2": 0.95, "grad_clip": 0.0,
                "device": "cuda", "compile": True}
GPT2_VOCAB = 50257
# --dry_run: the same code paths at the smallest size, on the CPU
DRY_RUN_RECIPE = {"n_layer": 1, "n_head": 2, "n_embd": 32, "batch_size": 2, "block_size": 32, "device": "cpu",
                  "compile": False}
DRY_RUN_NANOGPT = ["--device=cpu", "--compile=False", "--dtype=float32", "--batch_size=1", "--block_size=16"]
DRY_RUN_SHIM = ("import torch, model; torch.cuda.synchronize = lambda *a: None; config = model.GPTConfig; "
                "model.GPTConfig = lambda **k: config(**{**k, 'n_layer': 1, 'n_head': 2, 'n_embd': 32}); "
                "exec(open('bench.py').read())")
# SDPA's kernels by the names the profiler shows: ATen's op, and the CUDA kernels it launches
ATTENTION = {
    "flash": ("_scaled_dot_product_flash_attention", "flash_fwd", "flash_bwd"),
    "cudnn": ("_scaled_dot_product_cudnn_attention", "cudnn_generated_fort_native_sdpa"),
    "memory-efficient": ("_scaled_dot_product_efficient_attention", "fmha_cutlass", "efficient_attention"),
    "math": ("_scaled_dot_product_attention_math",),
}


@dataclass
class BenchGpuOptions:
    nanogpt: str | None = option(None)
    """A nanoGPT clone: run its bench.py beside hfgpt (without it, hfgpt alone)."""
    steps: int = option(20, min=1)
    """Timed steps (bench.py's 20)."""
    warmup: int = option(10, min=0)
    """Untimed steps first: compilation, allocator warm-up (bench.py's 10)."""
    fp16: bool = option(True)
    """Also time hfgpt in fp16 with the loss scaler."""
    nanogpt_kernels: bool = option(True)
    """Also name the attention kernels of nanoGPT's model (compiles it once more in this process)."""
    dry_run: bool = option(False)
    """On the CPU at the smallest size, without compile or profiles: checks that it runs (any machine)."""
    json: str | None = option(None)
    """Write the result here as JSON."""


def attention_kernels(step, steps: int = 3) -> dict:
    """{kind: [names]} of the SDPA kernels that ran during `steps` calls of step(), from the profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    names = {event.key for event in prof.key_averages()}
    found = {kind: sorted(n for n in names if any(p in n.lower() for p in patterns))[:4]
             for kind, patterns in ATTENTION.items()}
    return {kind: hits for kind, hits in found.items() if hits}


def timed(step, steps: int, warmup: int) -> float:
    """Seconds per step as bench.py measures it: the steps timed together, the loss read each step."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        step().item()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step().item()
    sync()
    return (time.perf_counter() - start) / steps


def hfgpt_side(precision: str, steps: int, warmup: int, dry_run: bool = False) -> dict:
    """hfgpt's training step on GPT-2 124M in `precision` ('bf16' or 'fp16'; dry_run: 'no', tiny, CPU)."""
    import numpy as np
    import torch
    from accelerate.state import AcceleratorState

    from hfgpt.config import load_recipe
    from hfgpt.data.batches import Batches
    from hfgpt.model.gpt import build_model
    from hfgpt.training.mfu import flops_per_token, mfu, peak_flops
    from hfgpt.training.run import Run, make_accelerator, prepare_training, stepper

    recipe = load_recipe(None, {**BENCH_RECIPE, "mixed_precision": precision, **(DRY_RUN_RECIPE if dry_run else {})})
    m, t = recipe.model, recipe.train
    AcceleratorState._reset_state(reset_partial_state=True)  # a second precision in this process
    torch._dynamo.reset()
    if not dry_run:
        torch.cuda.reset_peak_memory_stats()
    accelerator = make_accelerator(recipe)
    torch.manual_seed(t.seed)
    gpt = build_model(m, vocab_size=GPT2_VOCAB, eot_token_id=None)
    per_token = flops_per_token(gpt, m.block_size)
    model, optimizer, compiled = prepare_training(recipe, accelerator, gpt, accum=1)
    tokens = np.random.default_rng(t.seed).integers(0, GPT2_VOCAB, size=4_000_000, dtype=np.uint16)
    run = Run(accelerator, {}, None, None, None, model, optimizer, Batches(tokens, m.block_size, t.batch_size, t.seed),
              accum=1, tokens_per_iter=t.batch_size * m.block_size, compiled=compiled, flops_per_token=per_token,
              peak_flops=None if dry_run else peak_flops("cuda", precision))
    step = stepper(run, recipe.optim.grad_clip)
    seconds = timed(step, steps, warmup)
    utilization = mfu(per_token, run.tokens_per_iter / seconds, run.peak_flops)
    result = {"ms_per_iter": round(seconds * 1000, 2), "tokens_per_sec": round(run.tokens_per_iter / seconds),
              "mfu": round(utilization, 4) if utilization is not None else None, "loss": round(step().item(), 4),
              "attention_kernels": None if dry_run else attention_kernels(step), "compiled": compiled,
              "peak_memory_gb": None if dry_run else round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    if accelerator.scaler is not None:
        result["grad_scale"] = accelerator.scaler.get_scale()
    return result


def nanogpt_side(repo: Path, precision: str, peak: float | None, kernels: bool = True, dry_run: bool = False) -> dict:
    """nanoGPT's bench.py in a subprocess, then (kernels) its model profiled in this process as bench.py runs it."""
    dtype = {"bf16": "bfloat16", "fp16": "float16"}[precision]
    args = ["--real_data=False", "--compile=True", f"--dtype={dtype}"] + (DRY_RUN_NANOGPT if dry_run else [])
    script = ["bench.py"]
    if dry_run:  # bench.py calls torch.cuda.synchronize() whatever the device, and fixes GPT-2 124M's shape
        script = ["-c", DRY_RUN_SHIM]
    out = subprocess.run([sys.executable, *script, *args], cwd=repo, capture_output=True, text=True, timeout=1800)
    found = re.search(r"time per iteration: ([\d.]+)ms, MFU: ([\d.]+)%", out.stdout)
    if out.returncode or not found:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"nanoGPT's bench.py in {repo} failed (exit {out.returncode}): {tail[0]}")
    ms, mfu_a100 = float(found.group(1)), float(found.group(2)) / 100
    tokens = BENCH_RECIPE["batch_size"] * BENCH_RECIPE["block_size"] if not dry_run else 16
    utilization = round(mfu_a100 * 312e12 / peak, 4) if peak else None  # bench.py's MFU is against an A100
    result = {"ms_per_iter": ms, "tokens_per_sec": round(tokens / ms * 1000), "mfu": utilization,
              "mfu_vs_a100": mfu_a100, "attention_kernels": None}
    if kernels and not dry_run:
        result["attention_kernels"] = nanogpt_kernels(repo, dtype)
    return result


def nanogpt_kernels(repo: Path, dtype: str) -> dict:
    """The attention kernels nanoGPT's model runs, compiled and stepped as bench.py steps it."""
    import torch

    GPT, GPTConfig = nanogpt_classes(repo)
    torch.manual_seed(1337)
    model = GPT(GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768, dropout=0.0,
                          bias=False)).cuda()
    optimizer = model.configure_optimizers(1e-2, 1e-4, (0.9, 0.95), "cuda")
    model = torch.compile(model)
    x, y = (torch.randint(50304, (12, 1024), device="cuda") for _ in range(2))

    def step():  # bench.py's loop body
        with torch.autocast("cuda", dtype=getattr(torch, dtype)):
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(3):
        step().item()
    kernels = attention_kernels(step)
    model = optimizer = None  # freed (step's references too) before the cache is emptied
    torch.cuda.empty_cache()
    return kernels


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"bench gpu needs a CUDA GPU and torch {torch.__version__} sees none: run it on a machine with "
                        "an NVIDIA GPU and a CUDA build of torch (on this one: python -m hfgpt.bench train RECIPE)")


@command(Command("bench gpu", __doc__.split("\n\n")[0], options=BenchGpuOptions))
def main(parsed: Parsed) -> int:
    o = parsed.options
    if not o.dry_run:
        require_cuda()
    import torch

    from hfgpt.core.device import resolve_mixed_precision
    from hfgpt.training.mfu import peak_flops

    repo = Path(o.nanogpt) if o.nanogpt else None
    if repo is not None:
        nanogpt_classes(repo)  # a wrong folder fails before anything runs
        if not (repo / "bench.py").is_file():
            raise UserError(f"--nanogpt={repo} has no bench.py: give the folder of a nanoGPT clone")
    if o.dry_run:
        precision, peak, result = "bf16", None, {"device": "cpu (dry run)", "torch": torch.__version__, "precision": "no"}
    else:
        precision = resolve_mixed_precision("auto", "cuda")
        peak = peak_flops("cuda", precision)
        major, minor = torch.cuda.get_device_capability()
        result = {"device": torch.cuda.get_device_name(), "capability": f"{major}.{minor}", "torch": torch.__version__,
                  "precision": precision, "peak_tflops": peak / 1e12 if peak else None}
    if repo is not None:
        result["nanogpt"] = nanogpt_side(repo, precision, peak, kernels=o.nanogpt_kernels, dry_run=o.dry_run)
    result["hfgpt"] = hfgpt_side("no" if o.dry_run else precision, o.steps, o.warmup, dry_run=o.dry_run)
    if repo is not None:
        result["ratio_ms_per_iter"] = round(result["hfgpt"]["ms_per_iter"] / result["nanogpt"]["ms_per_iter"], 3)
    if o.fp16 and precision != "fp16" and not o.dry_run:
        result["hfgpt_fp16"] = hfgpt_side("fp16", o.steps, o.warmup)
    report(result, o.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
