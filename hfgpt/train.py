"""Train a GPT with one Accelerate loop.

    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml
    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --init_from=resume --max_iters=3000
    accelerate launch -m hfgpt.train recipes/shakespeare_char.yaml
    accelerate launch --config_file accelerate_config.yaml -m hfgpt.train recipes/my_dataset.yaml --max_iters=100
    accelerate launch --multi_gpu --num_processes 2 -m hfgpt.train recipes/shakespeare_char_cpu.yaml  # 2 CPU processes

Prepares the data when needed, builds or loads the model, and trains: random block_size windows,
gradient accumulation, AdamW with warmup + cosine decay, gradient clipping, mixed precision.
Every eval_interval iterations it estimates train and val loss, saves out_dir as a Hugging Face
model folder when val improves (always, with always_save_checkpoint) and writes a resumable
checkpoint to out_dir/checkpoints/. SIGINT or SIGTERM finish the iteration, checkpoint and exit
130 or 143; init_from=resume continues exactly where the run stopped. out_dir/metrics.jsonl holds
one JSON object per log line and per evaluation, also sent to the trackers of log_with; loss.png
is redrawn at each evaluation, and every saved model folder gets a README.md model card. With
push_to_hub the saves go to the Hub in the background (see hfgpt.push).
"""

import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from hfgpt.card import write_card
from hfgpt.checkpoint import check_resume, find_checkpoint, restore, save_checkpoint, save_model_folder
from hfgpt.config import Recipe, parse_cli
from hfgpt.data import TokenShards, Windows, check_split_size, load_tokens, to_device
from hfgpt.device import device_type, resolve_mixed_precision, should_compile
from hfgpt.errors import UserError, cli
from hfgpt.hub import resume_from_hub
from hfgpt.metrics import MetricsLog
from hfgpt.mfu import flops_per_token, mfu, peak_flops
from hfgpt.model import build_model, lm_loss, load_model, set_generation_defaults, use_float32_attention, zero_biases
from hfgpt.optim import get_lr, make_optimizer
from hfgpt.plot import plot_losses
from hfgpt.prepare import dataset_dir, ensure_prepared
from hfgpt.push import Pusher
from hfgpt.sample import eval_samples
from hfgpt.tokenizer import load_tokenizer
from hfgpt.trackers import start_trackers, tracker_options


def make_model(recipe: Recipe, meta: dict, tokenizer, checkpoint: Path | None = None):
    """From scratch with the dataset's vocabulary, or loaded (a Hub id, a folder, the checkpoint
    being resumed) and checked against the tokenizer."""
    m = recipe.model
    if checkpoint is None and m.init_from == "scratch":
        return build_model(m, vocab_size=meta["vocab_size"], eot_token_id=meta.get("eot_token_id"))
    source = str(checkpoint) if checkpoint is not None else m.init_from
    model = load_model(source, m.block_size, m.dropout)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(f"the {meta['tokenizer']} tokenizer of {recipe.data.dataset} has {len(tokenizer):,} ids but "
                        f"{source} embeds only {rows:,}: prepare the data with the model's own tokenizer "
                        f"(tokenizer: {source})")
    if checkpoint is not None and not m.bias:
        zero_biases(model)  # they are zero already; this keeps them out of training again
    if checkpoint is None:
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
            losses[k] = lm_loss(model, *to_device((x, y), accelerator.device))
        out[split] = accelerator.reduce(losses.mean(), reduction="mean").item()
    model.train()
    return out


class StopSignal:
    """While active, SIGINT and SIGTERM only set a flag: the loop finishes its iteration, saves a
    checkpoint and returns, and `main` exits 128 + the signal number (130, 143)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        self.signum = signum

    def received(self, accelerator: Accelerator) -> int:
        """The signal any process got (every process must stop at the same iteration)."""
        if accelerator.num_processes == 1:
            return self.signum
        return int(accelerator.gather(torch.tensor([self.signum], device=accelerator.device)).max().item())


@dataclass
class Run:
    """What setup() builds: the loop below uses it, and so does python -m hfgpt.bench train."""

    accelerator: Accelerator
    meta: dict
    tokenizer: object
    train_tokens: TokenShards
    val_tokens: TokenShards
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: Windows
    accum: int  # micro-batches per iteration on each process
    tokens_per_iter: int  # over all processes
    compiled: bool
    flops_per_token: float
    peak_flops: float | None  # None where the device's peak is unknown (MFU is then n/a)


def make_accelerator(recipe: Recipe, **options) -> Accelerator:
    dev = device_type(recipe.system.device)
    if dev == "cuda":  # TF32 matmuls: float32 range, tensor-core speed (as nanoGPT)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    accelerator = Accelerator(cpu=dev == "cpu", mixed_precision=resolve_mixed_precision(recipe.system.mixed_precision, dev),
                              **options)
    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if fsdp_asked and accelerator.distributed_type != DistributedType.FSDP and accelerator.is_main_process:
        print(f"note: accelerate runs FSDP on GPUs only; on {dev} this run is plain data parallel "
              f"({accelerator.distributed_type.value})")
    return accelerator


def setup(recipe: Recipe, accelerator: Accelerator, checkpoint: Path | None = None) -> Run:
    """Data (prepared by the main process when needed), model, optimizer and batch sampler."""
    r, t = recipe, recipe.train
    with accelerator.main_process_first():  # the others wait while the main process prepares
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

    set_seed(t.seed)  # identical initial weights on every process
    model = make_model(r, meta, tokenizer, checkpoint)
    torch.manual_seed(t.seed + accelerator.process_index)  # different dropout masks per process
    use_float32_attention(model, accelerator.device.type, accelerator.mixed_precision)
    per_token = flops_per_token(model, r.model.block_size)
    optimizer = make_optimizer(model, r.optim, accelerator.device.type)
    compiled = should_compile(r.system.compile, accelerator.device.type)
    if compiled:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()  # from_pretrained returns models in eval mode: dropout would be off
    batches = Windows(train_tokens, r.model.block_size, t.batch_size, seed=t.seed + accelerator.process_index)
    return Run(accelerator, meta, tokenizer, train_tokens, val_tokens, model, optimizer, batches,
               accum=t.gradient_accumulation_steps // world,
               tokens_per_iter=t.gradient_accumulation_steps * t.batch_size * r.model.block_size, compiled=compiled,
               flops_per_token=per_token, peak_flops=peak_flops(accelerator.device.type, accelerator.mixed_precision))


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, grad_clip: float):
    """One iteration: forward and backward over `accum` micro-batches (gradients sync across
    processes on the last one only), clip, update. Returns the iteration's mean loss (on the
    device, not synced) and the next batch, fetched while the device works."""
    accelerator, model, device = run.accelerator, run.model, run.accelerator.device
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(run.accum):
        last = micro_step == run.accum - 1
        with nullcontext() if last else accelerator.no_sync(model):
            loss = lm_loss(model, *to_device((x, y), device)) / run.accum
            x, y = run.batches.next_batch()
            accelerator.backward(loss)
        loss_sum += loss.detach()
    if grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum, x, y


def train(recipe: Recipe) -> dict:
    """Run the recipe to max_iters (or until a signal); returns the last evaluation, the best val
    loss, the iterations done and the signal that stopped the run (0 if none)."""
    r, t = recipe, recipe.train
    accelerator = make_accelerator(r, **tracker_options(r))
    master = accelerator.is_main_process
    device = accelerator.device
    pusher = Pusher.for_recipe(r) if master and r.hub.push_to_hub else None  # a bad token stops the run here
    resume_from_hub(accelerator, r)  # resume_from=user/name: download its last-checkpoint/ first
    resume = find_checkpoint(r) if r.model.init_from == "resume" else None
    if resume:
        message = check_resume(r, *resume)  # every process refuses a changed shape; the main one says so
        if master:
            print(message)
    run = setup(r, accelerator, checkpoint=resume[0] if resume else None)
    model, optimizer, batches, tokenizer = run.model, run.optimizer, run.batches, run.tokenizer
    train_tokens, val_tokens, tokens_per_iter = run.train_tokens, run.val_tokens, run.tokens_per_iter
    world = accelerator.num_processes

    iter_num, best_val_loss, tokens_seen, last_eval = 0, float("inf"), 0, {}
    origin = r.model.init_from
    if resume:
        restore(accelerator, optimizer, batches, resume[0])
        state = resume[1]
        iter_num, tokens_seen = state["iter"], state["tokens_seen"]
        best_val_loss = state["best_val_loss"] if state["best_val_loss"] is not None else float("inf")
        origin = state["init_from"]
    start_iter = iter_num

    out_dir = Path(t.out_dir)
    metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=master, resume_iter=iter_num if resume else None,
                         accelerator=accelerator)
    start_trackers(accelerator, r)
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    if master:
        print(f"training {n_params / 1e6:.2f}M parameters on {world} x {device.type} "
              f"({accelerator.mixed_precision} precision{', compiled' if run.compiled else ''}); "
              f"{tokens_per_iter:,} tokens per iteration = {run.accum} micro-batches x {world} processes x "
              f"{t.batch_size} x {r.model.block_size}")
    bar = tqdm(total=t.max_iters, initial=iter_num, disable=not master or None, desc="training", unit="it",
               dynamic_ncols=True)
    say = (bar.write if not bar.disable else print) if master else (lambda message: None)

    def checkpoint(losses: dict | None, samples: list[str] = ()) -> Path:
        best = best_val_loss if math.isfinite(best_val_loss) else None
        state = {"iter": iter_num, "tokens_seen": tokens_seen, "best_val_loss": best, "init_from": origin,
                 "train_loss": losses and losses["train"], "val_loss": losses and losses["val"]}
        folder = save_checkpoint(accelerator, model, optimizer, batches, tokenizer, r, state)
        if master:
            write_card(folder, {**state, "samples": list(samples)})
        return folder

    def check_finite(losses: dict | None = None) -> None:
        bad = int(first_bad_iter.item())
        if bad >= 0 or (losses and not all(math.isfinite(v) for v in losses.values())):
            where = f"iteration {bad}" if bad >= 0 else f"the evaluation at iteration {iter_num}"
            raise UserError(f"the loss became NaN or infinite at {where}; stopped without saving over the last good "
                            f"checkpoint in {out_dir / 'checkpoints'}: lower learning_rate (or use bf16 instead of "
                            "fp16) and continue with --init_from=resume")

    t_start = time.time()
    t_log, iters_since_log = time.time(), 0
    first_bad_iter = torch.tensor(-1, device=device)  # first iteration whose loss was not finite
    stopped = 0
    x, y = batches.next_batch()
    with StopSignal() as stop:
        while True:
            lr = get_lr(iter_num, r.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # evaluate; save the model when val improves (or always) and a resumable checkpoint
            evaluate = iter_num % t.eval_interval == 0 or iter_num == t.max_iters
            if evaluate and not (resume and iter_num == start_iter):
                losses = estimate_loss(model, {"train": train_tokens, "val": val_tokens}, r, accelerator)
                check_finite(losses)
                last_eval = {"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"]}
                samples = eval_samples(accelerator, model, tokenizer, r.log, seed=t.seed + iter_num)
                metrics.write(**last_eval, **({"samples": samples} if samples else {}))
                if master:
                    plot_losses(out_dir / "metrics.jsonl", out_dir / "loss.png", tokens_per_iter, title=str(out_dir))
                say(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                if iter_num > 0 and not t.eval_only:
                    improved = losses["val"] < best_val_loss
                    best_val_loss = min(best_val_loss, losses["val"])
                    if improved or t.always_save_checkpoint:
                        save_model_folder(accelerator, model, tokenizer, out_dir, r)
                        if master:
                            write_card(out_dir, {**last_eval, "tokens_seen": tokens_seen, "init_from": origin,
                                                 "samples": samples})
                        say(f"saved {out_dir} (val loss {losses['val']:.4f})")
                    saved = checkpoint(losses, samples)
                    if pusher:
                        pusher.after_save(iter_num, losses["val"], improved or t.always_save_checkpoint, saved)
                t_log = time.time()  # evaluation time does not count toward tokens/s
            if t.eval_only or iter_num >= t.max_iters:
                break
            if stopped := stop.received(accelerator):
                check_finite()
                say(f"{signal.Signals(stopped).name}: saved {checkpoint(None)}; continue with --init_from=resume")
                break

            loss_sum, x, y = train_step(run, x, y, r.optim.grad_clip)
            # remember the first non-finite loss without a device sync; checked at log and save time
            first_bad_iter = torch.where((first_bad_iter < 0) & ~torch.isfinite(loss_sum), iter_num, first_bad_iter)
            iter_num += 1
            iters_since_log += 1
            tokens_seen += tokens_per_iter

            if iter_num % t.log_interval == 0 or iter_num == t.max_iters:
                check_finite()
                now = time.time()
                lossf = loss_sum.item()
                tokens_per_sec = iters_since_log * tokens_per_iter / max(now - t_log, 1e-9)
                utilization = mfu(run.flops_per_token, tokens_per_sec, run.peak_flops and run.peak_flops * world)
                metrics.write(iter=iter_num, loss=lossf, lr=lr, tokens_per_sec=round(tokens_per_sec, 1),
                              elapsed_s=round(now - t_start, 3),
                              **({"mfu": round(utilization, 4)} if utilization is not None else {}))
                if bar.disable and master:
                    shown = f"{utilization:.1%}" if utilization is not None else "n/a"
                    print(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {tokens_per_sec:,.0f} tokens/s, mfu {shown}")
                bar.set_postfix(loss=f"{lossf:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}", refresh=False)
                t_log, iters_since_log = now, 0
            bar.update(1)

    bar.close()
    metrics.close()
    accelerator.wait_for_everyone()
    if master and not stopped:
        print(f"done: {iter_num - start_iter} iterations in {time.time() - t_start:.0f}s, best val loss "
              f"{best_val_loss:.4f}; sample with: python -m hfgpt.sample {out_dir}")
    accelerator.end_training()
    if pusher:
        pusher.finish(f"end of training: iter {iter_num}" if not stopped else f"stopped at iter {iter_num}")
    return {**last_eval, "best_val_loss": best_val_loss, "iters": iter_num, "signal": stopped}


@cli
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    recipe = parse_cli(argv, "python -m hfgpt.train", "Train a GPT on the recipe's dataset (prepares it first if needed).")
    if recipe is None:
        return 0
    result = train(recipe)
    return 128 + result["signal"] if result["signal"] else 0


if __name__ == "__main__":
    sys.exit(main())
