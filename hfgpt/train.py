"""Train a GPT with one Accelerate loop.

    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml
    accelerate launch -m hfgpt.train recipes/shakespeare_char.yaml
    accelerate launch --config_file accelerate_config.yaml -m hfgpt.train recipes/my_dataset.yaml --max_iters=100
    accelerate launch --cpu --num_processes 2 -m hfgpt.train recipes/shakespeare_char_cpu.yaml

Prepares the data when needed, builds or loads the model, and trains: random block_size windows,
gradient accumulation, AdamW with warmup + cosine decay, gradient clipping, mixed precision.
Every eval_interval iterations it estimates train and val loss and saves out_dir as a Hugging
Face model folder when val improves (always, with always_save_checkpoint). out_dir/metrics.jsonl
holds one JSON object per log line and per evaluation.
"""

import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from hfgpt.checkpoint import save_model_folder
from hfgpt.config import Recipe, parse_cli
from hfgpt.data import Windows, check_split_size, load_tokens
from hfgpt.device import device_type, resolve_mixed_precision
from hfgpt.errors import UserError, cli
from hfgpt.model import build_model, lm_loss, load_model, set_generation_defaults
from hfgpt.optim import get_lr, make_optimizer
from hfgpt.prepare import dataset_dir, ensure_prepared
from hfgpt.tokenizer import load_tokenizer


class MetricsLog:
    """out_dir/metrics.jsonl: one JSON object per line, flushed as written; main process only."""

    def __init__(self, path: Path, enabled: bool):
        self.file = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "w", encoding="utf-8")

    def write(self, **fields) -> None:
        if self.file:
            self.file.write(json.dumps(fields) + "\n")
            self.file.flush()


def make_model(recipe: Recipe, meta: dict, tokenizer):
    """From scratch with the dataset's vocabulary, or loaded and checked against the tokenizer."""
    m = recipe.model
    if m.init_from == "scratch":
        return build_model(m, vocab_size=meta["vocab_size"], eot_token_id=meta.get("eot_token_id"))
    model = load_model(m.init_from, m.block_size, m.dropout)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(f"the {meta['tokenizer']} tokenizer of {recipe.data.dataset} has {len(tokenizer):,} ids but "
                        f"{m.init_from} embeds only {rows:,}: prepare the data with the model's own tokenizer "
                        f"(tokenizer: {m.init_from})")
    set_generation_defaults(model, m.block_size, meta.get("eot_token_id"))
    return model


@torch.no_grad()
def estimate_loss(model, splits: dict, recipe: Recipe, accelerator: Accelerator) -> dict[str, float]:
    """Mean loss over eval_iters batches per split, averaged over processes.

    Every evaluation reads the same windows (a generator seeded afresh), so successive
    estimates differ only because the model changed.
    """
    t = recipe.train
    model.eval()
    out = {}
    for split, tokens in splits.items():
        windows = Windows(tokens, recipe.model.block_size, t.batch_size, seed=t.seed + 7919 * (accelerator.process_index + 1))
        losses = torch.zeros(t.eval_iters, device=accelerator.device)
        for k in range(t.eval_iters):
            x, y = windows.next_batch()
            losses[k] = lm_loss(model, x.to(accelerator.device), y.to(accelerator.device))
        out[split] = accelerator.reduce(losses.mean(), reduction="mean").item()
    model.train()
    return out


def train(recipe: Recipe) -> dict:
    """Run the recipe to max_iters; returns the last evaluation and the best val loss."""
    r, t = recipe, recipe.train
    dev = device_type(r.system.device)
    accelerator = Accelerator(cpu=dev == "cpu", mixed_precision=resolve_mixed_precision(r.system.mixed_precision, dev))
    master = accelerator.is_main_process
    device = accelerator.device

    # data: the main process prepares it when missing while the others wait, then all read it
    with accelerator.main_process_first():
        meta = ensure_prepared(r)
    folder = dataset_dir(r)
    tokenizer = load_tokenizer(str(folder / "tokenizer"))
    train_tokens, val_tokens = load_tokens(folder, meta, "train"), load_tokens(folder, meta, "val")
    check_split_size(train_tokens, "train", r.model.block_size, folder)
    check_split_size(val_tokens, "val", r.model.block_size, folder)

    # the global batch is the recipe's whatever the number of processes: each does its share
    world = accelerator.num_processes
    if t.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps={t.gradient_accumulation_steps} is not divisible by the {world} "
                        f"processes: make it a multiple of {world}")
    accum = t.gradient_accumulation_steps // world
    tokens_per_iter = t.gradient_accumulation_steps * t.batch_size * r.model.block_size

    set_seed(t.seed)  # identical initial weights on every process
    model = make_model(r, meta, tokenizer)
    torch.manual_seed(t.seed + accelerator.process_index)  # different dropout masks per process
    optimizer = make_optimizer(model, r.optim, device.type)
    compile_model = r.system.compile if r.system.compile is not None else device.type == "cuda"
    if compile_model:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    batches = Windows(train_tokens, r.model.block_size, t.batch_size, seed=t.seed + accelerator.process_index)

    out_dir = Path(t.out_dir)
    metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=master)
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    if master:
        print(f"training {n_params / 1e6:.2f}M parameters on {world} x {device.type} "
              f"({accelerator.mixed_precision} precision{', compiled' if compile_model else ''}); "
              f"{tokens_per_iter:,} tokens per iteration = {accum} micro-batches x {world} processes x "
              f"{t.batch_size} x {r.model.block_size}")
    bar = tqdm(total=t.max_iters, disable=not master or None, desc="training", unit="it", dynamic_ncols=True)
    say = bar.write if not bar.disable else print

    iter_num, best_val_loss, last_eval = 0, float("inf"), {}
    t_start = time.time()
    t_log, iters_since_log = time.time(), 0
    x, y = batches.next_batch()
    while True:
        lr = get_lr(iter_num, r.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # evaluate, and save when val improves (or always)
        if iter_num % t.eval_interval == 0 or iter_num == t.max_iters:
            losses = estimate_loss(model, {"train": train_tokens, "val": val_tokens}, r, accelerator)
            last_eval = {"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"]}
            metrics.write(**last_eval)
            if master:
                say(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if iter_num > 0 and (losses["val"] < best_val_loss or t.always_save_checkpoint):
                if master:
                    save_model_folder(accelerator.unwrap_model(model), tokenizer, out_dir, r)
                    say(f"saved {out_dir} (val loss {losses['val']:.4f})")
            best_val_loss = min(best_val_loss, losses["val"]) if iter_num > 0 else best_val_loss
            t_log = time.time()  # evaluation time does not count toward tokens/s
        if t.eval_only or iter_num >= t.max_iters:
            break

        # forward, backward, update; gradients sync across processes on the last micro-batch only
        loss_sum = torch.zeros((), device=device)
        for micro_step in range(accum):
            last = micro_step == accum - 1
            with nullcontext() if last else accelerator.no_sync(model):
                loss = lm_loss(model, x.to(device, non_blocking=True), y.to(device, non_blocking=True)) / accum
                x, y = batches.next_batch()  # fetch the next batch while the device works
                accelerator.backward(loss)
            loss_sum += loss.detach()
        if r.optim.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), r.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1
        iters_since_log += 1

        if iter_num % t.log_interval == 0 or iter_num == t.max_iters:
            now = time.time()
            lossf = loss_sum.item()
            tokens_per_sec = iters_since_log * tokens_per_iter / max(now - t_log, 1e-9)
            metrics.write(iter=iter_num, loss=lossf, lr=lr, tokens_per_sec=round(tokens_per_sec, 1),
                          elapsed_s=round(now - t_start, 3))
            if bar.disable and master:
                print(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {tokens_per_sec:,.0f} tokens/s")
            bar.set_postfix(loss=f"{lossf:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}", refresh=False)
            t_log, iters_since_log = now, 0
        bar.update(1)

    bar.close()
    accelerator.wait_for_everyone()
    if master:
        print(f"done: {iter_num} iterations in {time.time() - t_start:.0f}s, best val loss {best_val_loss:.4f}; "
              f"sample with: python -m hfgpt.sample {out_dir}")
    accelerator.end_training()
    return {**last_eval, "best_val_loss": best_val_loss, "iters": iter_num}


@cli
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    recipe = parse_cli(argv, "python -m hfgpt.train", "Train a GPT on the recipe's dataset (prepares it first if needed).")
    if recipe is None:
        return 0
    train(recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
