"""What a run shows and records as it goes: a progress bar on a terminal, else one plain line per
log_interval; metrics.jsonl and the trackers; loss.png at each evaluation (drawn in a background
thread); a summary at the end.

    progress = Progress(accelerator, recipe, run, state, resumed=False)
    progress.start()                            # the line saying what trains where
    progress.update()                           # every iteration (the bar)
    progress.log(state, loss=2.31, lr=1e-3)     # every log_interval iterations
    progress.evaluation(state, samples)         # every evaluation: state.train_loss, state.val_loss
    progress.restart_clock()                    # after evaluating and saving (they are not tokens/s)
    progress.say("saved out")                   # a line that does not break the bar
    progress.close(); progress.summary(state)   # at the end

Without a terminal (CI, nohup, accelerate launch into a file) each log line reads
    iter 250/2000: loss 2.0312, lr 9.40e-04, 31.4 ms/iter, 24,459 tokens/s, elapsed 0:08, eta 0:55
with `mfu` only where the device's peak is known and, in fp16, `N steps skipped (fp16 overflow)`
once the loss scaler has skipped any (metrics.jsonl: `skipped_steps` in every fp16 row);
evaluations print on their own line.
"""

import time
from pathlib import Path

from tqdm.auto import tqdm

from hfgpt.config import Recipe
from hfgpt.core.layout import checkpoint_dir, list_checkpoints
from hfgpt.training.metrics import MetricsLog
from hfgpt.training.mfu import mfu
from hfgpt.training.plot import Plotter
from hfgpt.training.state import LoopState

PRECISION = {"no": "float32", "bf16": "bf16 mixed precision", "fp16": "fp16 mixed precision"}


def clock(seconds: float) -> str:
    """0:08, 12:03, 1:02:03."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(self, accelerator, recipe: Recipe, run, state: LoopState, resumed: bool):
        self.accelerator, self.recipe, self.run = accelerator, recipe, run
        self.main = accelerator.is_main_process
        self.out_dir = Path(recipe.train.out_dir)
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", enabled=self.main,
                                  resume_iter=state.iter if resumed else None, accelerator=accelerator,
                                  append=recipe.train.eval_only)
        self.start_iter, self.started = state.iter, time.time()
        self.t_log, self.iters_since_log = time.time(), 0
        self.bar = tqdm(total=recipe.train.max_iters, initial=state.iter, disable=not self.main or None,
                        desc="training", unit="it", dynamic_ncols=True)
        self.plotter = Plotter(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png", run.tokens_per_iter,
                               title=str(self.out_dir)) if self.main else None

    def say(self, message: str) -> None:
        """A line on the main process, above the bar when there is one."""
        if not self.main:
            return
        if self.bar.disable:
            print(message, flush=True)
        else:
            self.bar.write(message)

    def start(self) -> None:
        r, run, world = self.recipe, self.run, self.accelerator.num_processes
        self.say(f"training {run.n_params / 1e6:.2f}M parameters on {world} x {self.accelerator.device.type} "
                 f"({PRECISION[self.accelerator.mixed_precision]}{', compiled' if run.compiled else ''}); "
                 f"{run.tokens_per_iter:,} tokens per iteration = {run.accum} micro-batches x {world} processes x "
                 f"{r.train.batch_size} x {r.model.block_size}")

    def update(self) -> None:
        self.iters_since_log += 1
        self.bar.update(1)

    def log(self, state: LoopState, loss: float, lr: float) -> None:
        """One log line: metrics.jsonl, the trackers, and the bar or a plain line."""
        now = time.time()
        seconds = max(now - self.t_log, 1e-9)
        ms_per_iter = 1000 * seconds / max(self.iters_since_log, 1)
        tokens_per_sec = self.iters_since_log * self.run.tokens_per_iter / seconds
        peak = self.run.peak_flops and self.run.peak_flops * self.accelerator.num_processes
        utilization = mfu(self.run.flops_per_token, tokens_per_sec, peak)
        elapsed = now - self.started
        done = state.iter - self.start_iter
        last = state.last_iter(self.recipe.train.max_iters)
        eta = elapsed / done * (last - state.iter) if done else 0.0
        fp16 = self.accelerator.mixed_precision == "fp16"  # the loss scaler skips steps whose gradients overflow
        self.metrics.write(iter=state.iter, loss=loss, lr=lr, tokens_per_sec=round(tokens_per_sec, 1),
                           ms_per_iter=round(ms_per_iter, 2), elapsed_s=round(elapsed, 3),
                           **({"mfu": round(utilization, 4)} if utilization is not None else {}),
                           **({"skipped_steps": state.skipped_steps} if fp16 else {}))
        extra = f", mfu {utilization:.1%}" if utilization is not None else ""
        if fp16 and state.skipped_steps:
            extra += f", {state.skipped_steps} steps skipped (fp16 overflow)"
        if self.bar.disable and self.main:
            print(f"iter {state.iter}/{last}: loss {loss:.4f}, lr {lr:.2e}, "
                  f"{ms_per_iter:.1f} ms/iter, {tokens_per_sec:,.0f} tokens/s{extra}, elapsed {clock(elapsed)}, "
                  f"eta {clock(eta)}", flush=True)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}", refresh=False)
        self.t_log, self.iters_since_log = now, 0

    def evaluation(self, state: LoopState, samples: list[str]) -> None:
        """The evaluation's row in metrics.jsonl, loss.png's redraw asked for and a line."""
        row = {"iter": state.iter, "train_loss": state.train_loss, "val_loss": state.val_loss}
        self.metrics.write(**row, **({"samples": samples} if samples else {}))
        if self.plotter:
            self.plotter.request()
        self.say(f"iter {state.iter}: train loss {state.train_loss:.4f}, val loss {state.val_loss:.4f}")

    def restart_clock(self) -> None:
        """Evaluation and saving do not count toward tokens/s."""
        self.t_log = time.time()

    def close(self) -> None:
        """The bar and metrics.jsonl closed, loss.png's last redraw done."""
        self.bar.close()
        self.metrics.close()
        if self.plotter:
            self.plotter.finish()

    def summary(self, state: LoopState) -> None:
        """What the run did and where its results are, with the next commands."""
        if not self.main:
            return
        out = self.out_dir
        done = state.iter - self.start_iter
        lines = [f"done: {done:,} iterations ({done * self.run.tokens_per_iter:,} tokens) in "
                 f"{clock(time.time() - self.started)}; at iter {state.iter}"]
        if state.val_loss is not None:
            lines[0] += f" train loss {state.train_loss:.4f}, val loss {state.val_loss:.4f}"
        if state.best_val_loss is not None:
            lines[0] += f"; best val loss {state.best_val_loss:.4f}"
        if state.skipped_steps:
            lines.append(f"  fp16:        {state.skipped_steps:,} optimizer steps skipped by the loss scaler (gradients "
                         "overflowed; many of them: use bf16, or lower learning_rate)")
        if (out / "config.json").is_file():
            lines.append(f"  model:       {out}/ (model card README.md, loss.png, metrics.jsonl)")
        found = [folder.name for folder, _ in list_checkpoints(out)]
        if found:
            lines.append(f"  checkpoints: {checkpoint_dir(out)}/ ({', '.join(found)}); continue with --init_from=resume")
        start = self.recipe.log.sample_start.strip()
        lines += [f"  next:        python -m hfgpt.sample {out}" + (f" --start={start!r}" if start else ""),
                  f"               python -m hfgpt.eval {out}",
                  f"               python -m hfgpt.push {out} --hub_model_id=YOU/{out.resolve().name}"]
        print("\n".join(lines), flush=True)
