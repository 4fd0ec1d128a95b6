"""python -m hfgpt.bench finetune: peak memory and speed of a fine-tuning step, full, with gradient
checkpointing, and LoRA, on a real model's configuration; with --trainer, side by side with
transformers' Trainer running the same model.

    python -m hfgpt.bench finetune                                       # gpt2-medium, one 512-token window, CPU
    python -m hfgpt.bench finetune --model=smollm2-135m --trainer --pairs=3 --modes=full,checkpointing
    python -m hfgpt.bench finetune --model=gpt2-xl --block_size=1024 --batch_size=4 --device=cuda --mixed_precision=bf16
    python -m hfgpt.bench finetune --modes=lora --lora_r=16 --steps=5 --json=finetune.json

The model has the named model's exact configuration (SHAPES: GPT-2's four sizes, SmolLM2-135M and
-360M, Qwen2.5-0.5B, Llama-3.2-1B, as their config.json on the Hub) with random weights, so nothing
is downloaded. Each measurement runs in a fresh process, so that its peak memory is its own.
hfgpt's side is the step python -m hfgpt.train runs: the model prepared by prepare_training
(hfgpt's attention, NextTokenLoss, fused AdamW, accelerate's mixed precision) and train_step
(forward, backward, clip, update) on random windows; full trains every weight, checkpointing adds
gradient_checkpointing, lora trains peft adapters (lora_r, lora_alpha, lora_dropout on every linear
layer of the blocks). With --trainer, transformers' Trainer trains the same model (same seed) with
the same batch, sequence length, precision (TrainingArguments bf16/fp16), optimizer
(adamw_torch_fused, the same betas, weight decay and learning rate, constant), clipping and
gradient checkpointing, on windows of block_size tokens with labels = input_ids (its loss shifts
them), as a user would run it; the pairs alternate which side goes first.

Reported per run: s_per_iter (median over --steps after --warmup), cpu_s_per_iter (CPU time of all
threads: on a shared machine steadier than wall time), tokens_per_s (batch_size x block_size per
step), peak_memory_mb (CUDA: most allocated; CPU: the process's resident set high-water mark over
all steps, model and optimizer included), trainable and total parameters. On the CPU the children
run with MALLOC_MMAP_THRESHOLD_=--mmap_threshold: with glibc's default, freed activations stay in
malloc's heaps and the resident set overstates the live tensors by GBs (0 keeps glibc's default).
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

_LLAMA_TIED = {"tie_word_embeddings": True, "rms_norm_eps": 1e-5, "hidden_act": "silu"}
SHAPES = {  # model_type and config of each named model, as its config.json on the Hub (weights random)
    "gpt2": ("gpt2", {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024,
                      "activation_function": "gelu_new"}),
    "gpt2-medium": ("gpt2", {"n_layer": 24, "n_embd": 1024, "n_head": 16, "vocab_size": 50257, "n_positions": 1024,
                             "activation_function": "gelu_new"}),
    "gpt2-large": ("gpt2", {"n_layer": 36, "n_embd": 1280, "n_head": 20, "vocab_size": 50257, "n_positions": 1024,
                            "activation_function": "gelu_new"}),
    "gpt2-xl": ("gpt2", {"n_layer": 48, "n_embd": 1600, "n_head": 25, "vocab_size": 50257, "n_positions": 1024,
                         "activation_function": "gelu_new"}),
    "smollm2-135m": ("llama", {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
                               "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                               "max_position_embeddings": 8192, "rope_parameters": {"rope_type": "default",
                                                                                    "rope_theta": 100000.0},
                               **_LLAMA_TIED}),
    "smollm2-360m": ("llama", {"num_hidden_layers": 32, "hidden_size": 960, "num_attention_heads": 15,
                               "num_key_value_heads": 5, "intermediate_size": 2560, "vocab_size": 49152,
                               "max_position_embeddings": 8192, "rope_parameters": {"rope_type": "default",
                                                                                    "rope_theta": 100000.0},
                               **_LLAMA_TIED}),
    "qwen2.5-0.5b": ("qwen2", {"num_hidden_layers": 24, "hidden_size": 896, "num_attention_heads": 14,
                               "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
                               "max_position_embeddings": 32768, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
                               "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}),
    "llama-3.2-1b": ("llama", {"num_hidden_layers": 16, "hidden_size": 2048, "num_attention_heads": 32,
                               "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
                               "max_position_embeddings": 131072, "head_dim": 64, **_LLAMA_TIED,
                               "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 8192}}),
}
MODES = ("full", "checkpointing", "lora")
SIDES = ("hfgpt", "trainer")
LEARNING_RATE, WEIGHT_DECAY, BETAS, GRAD_CLIP = 3e-5, 0.1, (0.9, 0.95), 1.0


@dataclass
class BenchFinetuneOptions:
    model: str = option("gpt2-medium", choices=tuple(SHAPES))
    """Whose configuration the model has (random weights, nothing downloaded)."""
    n_layer: int | None = option(None, min=1)
    """Override the model's layers (a quick check on a small model)."""
    n_embd: int | None = option(None, min=1)
    """Override the model's width (a llama-shaped model's MLP and heads follow it)."""
    n_head: int | None = option(None, min=1)
    """Override the model's heads."""
    modes: str = option(",".join(MODES))
    """Comma-separated: full, checkpointing (full + gradient_checkpointing), lora."""
    trainer: bool = option(False)
    """Also run each mode with transformers' Trainer, alternating with hfgpt's step over --pairs."""
    pairs: int = option(3, min=1)
    """With --trainer: runs of each side per mode, alternating which goes first."""
    block_size: int = option(512, min=1)
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
    """Timed steps per run."""
    warmup: int = option(1, min=1)
    """Untimed steps first (AdamW allocates its moments in the first)."""
    device: str = option("cpu", choices=("cpu", "cuda"))
    """Where the steps run."""
    mixed_precision: str = option("no", choices=("no", "bf16", "fp16"))
    """Autocast dtype of the forward; the weights stay float32."""
    mmap_threshold: int = option(131072, min=0)
    """CPU: glibc's MALLOC_MMAP_THRESHOLD_ for each run's process; 0 keeps glibc's default."""
    one: str | None = option(None, choices=MODES)
    """Run this one mode in this process (what each child does)."""
    side: str = option("hfgpt", choices=SIDES)
    """With --one: whose step runs it."""
    json: str | None = option(None)
    """Write the result here as JSON."""


def model_config(o: BenchFinetuneOptions):
    """The named model's config, with the --n_layer/--n_embd/--n_head overrides."""
    from transformers import AutoConfig

    from hfgpt.model.families.llama import swiglu_hidden

    model_type, values = SHAPES[o.model]
    values = dict(values)
    if model_type == "gpt2":
        values.update({k: v for k, v in (("n_layer", o.n_layer), ("n_embd", o.n_embd), ("n_head", o.n_head)) if v})
    else:
        if o.n_layer:
            values["num_hidden_layers"] = o.n_layer
        if o.n_embd or o.n_head:
            width, heads = o.n_embd or values["hidden_size"], o.n_head or values["num_attention_heads"]
            kv = values["num_key_value_heads"]
            values.update(hidden_size=width, num_attention_heads=heads, head_dim=width // heads,
                          num_key_value_heads=kv if heads % kv == 0 else heads, intermediate_size=swiglu_hidden(width))
    return AutoConfig.for_model(model_type, **values)


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


def build(o: BenchFinetuneOptions, mode: str):
    """The model of one mode, as a fine-tune starts it: random weights (seed 0), cropped to
    block_size, gradient checkpointing or LoRA added by hfgpt's own functions."""
    import torch
    from transformers import AutoModelForCausalLM

    from hfgpt.config import ModelConfig
    from hfgpt.model.gpt import crop_block_size, enable_checkpointing
    from hfgpt.model.lora import add_lora

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(o))
    crop_block_size(model, o.block_size)
    if mode == "checkpointing":
        enable_checkpointing(model)
    if mode == "lora":
        model = add_lora(model, ModelConfig(lora_r=o.lora_r, lora_alpha=o.lora_alpha, lora_dropout=o.lora_dropout))
    return model


def hfgpt_steps(o: BenchFinetuneOptions, mode: str, tokens, on_step) -> object:
    """hfgpt's training step, as python -m hfgpt.train prepares and runs it; on_step() after each."""
    from types import SimpleNamespace

    from hfgpt.config import load_recipe
    from hfgpt.data.batches import Batches
    from hfgpt.training.run import make_accelerator, prepare_training, stepper

    recipe = load_recipe(None, {"device": o.device, "mixed_precision": o.mixed_precision, "compile": False,
                                "block_size": o.block_size, "batch_size": o.batch_size, "gradient_accumulation_steps": 1,
                                "learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "beta1": BETAS[0],
                                "beta2": BETAS[1], "grad_clip": GRAD_CLIP, "decay_lr": False})
    accelerator = make_accelerator(recipe)
    gpt = build(o, mode)
    model, optimizer, _ = prepare_training(recipe, accelerator, gpt, accum=1)
    run = SimpleNamespace(accelerator=accelerator, model=model, optimizer=optimizer, accum=1,
                          batches=Batches(tokens, o.block_size, o.batch_size, seed=0))
    step = stepper(run, GRAD_CLIP)
    for _ in range(o.warmup + o.steps):
        step().item()
        on_step()
    return gpt


def trainer_steps(o: BenchFinetuneOptions, mode: str, tokens, on_step) -> object:
    """transformers' Trainer on the same model, batch, precision, optimizer and clipping; on_step()
    after each of its steps (a TrainerCallback)."""
    import tempfile

    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = build(o, "full" if mode == "checkpointing" else mode)  # Trainer turns checkpointing on itself

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return (o.warmup + o.steps) * o.batch_size

        def __getitem__(self, i):
            start = torch.randint(len(tokens) - o.block_size, (1,), generator=torch.Generator().manual_seed(i)).item()
            ids = torch.from_numpy(tokens[start:start + o.block_size].astype("int64"))
            return {"input_ids": ids, "labels": ids}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            on_step()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=o.batch_size, gradient_accumulation_steps=1,
            max_steps=o.warmup + o.steps, learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, adam_beta1=BETAS[0],
            adam_beta2=BETAS[1], max_grad_norm=GRAD_CLIP, optim="adamw_torch_fused", lr_scheduler_type="constant",
            bf16=o.mixed_precision == "bf16", fp16=o.mixed_precision == "fp16", use_cpu=o.device == "cpu",
            gradient_checkpointing=mode == "checkpointing", gradient_checkpointing_kwargs={"use_reentrant": False},
            logging_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
            seed=0)
        Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[Timer()]).train()
    return model


def run_mode(o: BenchFinetuneOptions, mode: str, side: str = "hfgpt") -> dict:
    """Build the model of one mode and time its steps on `side`, in this process."""
    import numpy as np
    import torch

    device = torch.device(o.device)
    vocab = model_config(o).vocab_size
    tokens = np.random.default_rng(0).integers(0, vocab, size=max(100_000, 4 * o.block_size), dtype=np.int64)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    reset, peak = memory_probe(device)
    marks = []

    def on_step():
        sync()
        marks.append((time.perf_counter(), time.process_time()))

    reset()
    marks.append((time.perf_counter(), time.process_time()))
    model = (hfgpt_steps if side == "hfgpt" else trainer_steps)(o, mode, tokens, on_step)
    timed = list(zip(marks[o.warmup:-1], marks[o.warmup + 1:]))
    wall = statistics.median(b[0] - a[0] for a, b in timed)
    return {"mode": mode, "side": side, "s_per_iter": round(wall, 4),
            "cpu_s_per_iter": round(statistics.median(b[1] - a[1] for a, b in timed), 4),
            "tokens_per_s": round(o.batch_size * o.block_size / wall, 1), "peak_memory_mb": round(peak()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}


def child(o: BenchFinetuneOptions, mode: str, side: str, env: dict) -> dict:
    own = [f"--{k}={v}" for k, v in vars(o).items() if v is not None and k not in ("one", "json", "modes", "trainer", "side")]
    result = subprocess.run([sys.executable, "-m", "hfgpt.bench.finetune", *own, f"--one={mode}", f"--side={side}"],
                            capture_output=True, text=True, env=env)
    if result.returncode:
        raise UserError(f"bench finetune: {side} {mode} failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def side_by_side(rows: list[dict], modes: list[str]) -> list[dict]:
    """Per mode: each side's median tokens/s and peak memory, and hfgpt's tokens/s over Trainer's."""
    out = []
    for mode in modes:
        summary = {"mode": mode}
        for side in SIDES:
            mine = [r for r in rows if r["mode"] == mode and r["side"] == side]
            summary[side] = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
                             "cpu_s_per_iter": statistics.median(r["cpu_s_per_iter"] for r in mine),
                             "peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in mine),
                             "runs": [r["tokens_per_s"] for r in mine]}
        summary["speed_ratio"] = round(summary["hfgpt"]["tokens_per_s"] / summary["trainer"]["tokens_per_s"], 3)
        out.append(summary)
    return out


@command(Command("bench finetune", __doc__.split("\n\n")[0], options=BenchFinetuneOptions))
def main(parsed: Parsed) -> int:
    o = parsed.options
    if o.one:
        print(json.dumps(run_mode(o, o.one, o.side)))
        return 0
    modes = [m.strip() for m in o.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise UserError(f"--modes={o.modes}: choose from {', '.join(MODES)}, comma-separated")
    env = child_env(**({"MALLOC_MMAP_THRESHOLD_": str(o.mmap_threshold)} if o.device == "cpu" and o.mmap_threshold else {}))
    rows = []
    load = os.getloadavg()[0]
    for mode in modes:
        for pair in range(o.pairs if o.trainer else 1):
            order = SIDES[::-1] if pair % 2 else SIDES
            for side in order if o.trainer else ("hfgpt",):
                rows.append({**child(o, mode, side, env), "pair": pair, "first": order[0]})
                r = rows[-1]
                print(f"{mode:14s} {side:8s} {r['s_per_iter']:8.3f} s/iter ({r['cpu_s_per_iter']:.2f} CPU s) "
                      f"{r['tokens_per_s']:10,.0f} tokens/s  peak memory {r['peak_memory_mb']:,} MB  trainable "
                      f"{r['trainable_params']:,} of {r['params']:,}", flush=True)
    config = model_config(o)
    shape = [config.num_hidden_layers, config.hidden_size, config.num_attention_heads]
    result = {"model": o.model, "n_layer_n_embd_n_head": shape, "block_size": o.block_size, "batch_size": o.batch_size,
              "device": o.device, "mixed_precision": o.mixed_precision, "cpu": cpu_name(),
              "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
              "malloc_mmap_threshold": env.get("MALLOC_MMAP_THRESHOLD_"), "modes": rows}
    if o.trainer:
        result["side_by_side"] = side_by_side(rows, modes)
    report(result, o.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
