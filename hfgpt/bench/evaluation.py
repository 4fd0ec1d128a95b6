"""python -m hfgpt.bench evaluation: what one evaluation during training costs beyond its loss estimate.

    python -m hfgpt.bench evaluation recipes/shakespeare_char.yaml --loss_batches=2 --evaluations=3
    python -m hfgpt.bench evaluation recipes/shakespeare_char.yaml --device=cuda --json=bench-eval.json

The run is built as python -m hfgpt.train builds it (hfgpt.training.run.setup: the recipe's model,
data, optimizer, precision, compile), metrics.jsonl is filled with the rows a whole run of the
recipe logs (so loss.png is redrawn at its final size), and hfgpt.training.loop.evaluate_and_save,
the loop's own evaluation, runs at --evaluations iterations after one untimed warm-up (compilation,
imports; the optimizer has stepped once on zero gradients, so that its state is there to save),
with always_save_checkpoint on: every evaluation saves out_dir, as one where val
improves does. Timed on the training thread, per evaluation: all of it (evaluation_s, with the
process's CPU seconds beside it), the loss estimate, the samples, the checkpoint (what nanoGPT
pays too, in its own format: model and optimizer), a separate out_dir save where there is one,
the model cards, the metrics row with loss.png's redraw (or its request). extras_s is the sum of
those nanoGPT's evaluation never pays (samples, a separate out_dir save, cards, row and plot);
other_s what the evaluation took beyond all the parts timed (syncs, the loss check). The loss estimate runs over
--loss_batches batches per split and is scaled to the recipe's eval_iters (a CPU takes seconds a
batch of a GPU recipe), and extras_ratio = extras_s / that. end_of_run_s: closing the run (the last
loss.png redraw waited for, out_dir's card rendered again); card_sample_s: the one text a GPU run
generates at its end for out_dir's card (eval_samples: null). The run's folder is temporary.
"""

import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hfgpt.bench import cpu_name, report
from hfgpt.config import Command, Parsed, command, option

# the functions of an evaluation, as the loop calls them: (module, name) -> the figure they add to
TIMED = {("hfgpt.training.loop", "estimate_loss"): "loss_estimate_s",
         ("hfgpt.training.loop", "eval_samples"): "samples_s",
         ("hfgpt.training.loop", "save_checkpoint"): "checkpoint_s",
         ("hfgpt.training.loop", "save_model_folder"): "model_folder_s",
         ("hfgpt.training.loop", "write_card"): "cards_s",
         ("hfgpt.training.progress", "Progress.evaluation"): "row_and_plot_s"}
EXTRAS = ("samples_s", "model_folder_s", "cards_s", "row_and_plot_s")  # what nanoGPT's evaluation does without


@dataclass
class BenchEvaluationOptions:
    evaluations: int = option(3, min=1)
    """Timed evaluations (after one untimed warm-up)."""
    loss_batches: int | None = option(None, min=1)
    """Batches per split the loss estimate is timed over (None: the recipe's eval_iters), scaled to eval_iters."""
    json: str | None = option(None)
    """Write the result here as JSON."""


class Timers:
    """Wall seconds spent in the functions of TIMED by the calling thread, replaced in their modules
    (the loop looks them up at call time) and put back by restore()."""

    def __init__(self):
        import importlib
        import threading

        self.seconds, self.saved = {}, []
        main = threading.main_thread()
        for (module_name, name), figure in TIMED.items():
            owner = importlib.import_module(module_name)
            *path, attr = name.split(".")
            for part in path:
                owner = getattr(owner, part)
            real = getattr(owner, attr, None)
            if real is None:  # not in this version of hfgpt
                continue

            def timed(*args, _real=real, _figure=figure, **kwargs):
                start = time.perf_counter()
                try:
                    return _real(*args, **kwargs)
                finally:
                    if threading.current_thread() is main:
                        self.seconds[_figure] = self.seconds.get(_figure, 0.0) + time.perf_counter() - start

            self.saved.append((owner, attr, real))
            setattr(owner, attr, timed)

    def take(self) -> dict:
        seconds, self.seconds = self.seconds, {}
        return seconds

    def restore(self) -> None:
        for owner, attr, real in self.saved:
            setattr(owner, attr, real)


def fill_metrics(progress, recipe) -> None:
    """The rows of a whole run of the recipe: a loss row every log_interval, an evaluation every eval_interval."""
    t = recipe.train
    for it in range(0, t.max_iters + 1):
        if it and it % t.log_interval == 0:
            progress.metrics.write(iter=it, loss=4.0 - it / t.max_iters, lr=1e-3, tokens_per_sec=1e5, ms_per_iter=10.0,
                                   elapsed_s=it / 100)
        if it % t.eval_interval == 0:
            progress.metrics.write(iter=it, train_loss=4.0 - it / t.max_iters, val_loss=4.1 - it / t.max_iters)


@command(Command("bench evaluation", __doc__.split("\n\n")[0], options=BenchEvaluationOptions, recipe_step="train"))
def main(parsed: Parsed) -> int:
    import torch

    from hfgpt.training import loop
    from hfgpt.training.run import make_accelerator, setup
    from hfgpt.training.state import LoopState

    o, r = parsed.options, parsed.recipe
    eval_iters = r.train.eval_iters
    r.train.eval_iters = o.loss_batches or eval_iters
    r.train.always_save_checkpoint = True
    work = Path(tempfile.mkdtemp(prefix="hfgpt-bench-evaluation-", dir="."))
    r.train.out_dir = str(work / "out")
    timers = None
    try:
        accelerator = make_accelerator(r)
        run = setup(r, accelerator)
        for p in run.model.parameters():  # the optimizer's state at its full size, as a checkpoint saves it
            p.grad = torch.zeros_like(p) if p.requires_grad else None
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        state = LoopState(init_from=r.model.init_from)
        progress = loop.Progress(accelerator, r, run, state, resumed=False)
        fill_metrics(progress, r)
        watch = loop.LossWatch(accelerator.device, Path(r.train.out_dir))
        sync = torch.cuda.synchronize if accelerator.device.type == "cuda" else (lambda: None)
        timers, rows = Timers(), []
        for k in range(o.evaluations + 1):  # the first one untimed
            state.iter = (k + 1) * r.train.eval_interval
            state.best_val_loss = None  # improved: out_dir is saved
            sync()
            start, cpu = time.perf_counter(), time.process_time()
            loop.evaluate_and_save(run, state, r, progress, watch, None)
            sync()
            row = {"evaluation_s": time.perf_counter() - start, "evaluation_cpu_s": time.process_time() - cpu,
                   **timers.take()}
            if k:
                rows.append(row)
        start = time.perf_counter()
        progress.close()
        finish = getattr(loop, "finish_card", None)  # hfgpt versions before it had no end-of-run step
        if finish is not None:
            finish(run, r)
        end_of_run = time.perf_counter() - start
        card_sample = None
        if hasattr(loop, "folder_samples"):
            start = time.perf_counter()
            loop.folder_samples(Path(r.train.out_dir), r.log, 1, seed=0, device=accelerator.device.type)
            card_sample = time.perf_counter() - start
    finally:
        if timers is not None:
            timers.restore()
        shutil.rmtree(work, ignore_errors=True)

    for row in rows:
        row["extras_s"] = sum(row.get(key, 0.0) for key in EXTRAS)
        row["other_s"] = row["evaluation_s"] - row["extras_s"] - row.get("loss_estimate_s", 0.0) - row.get("checkpoint_s", 0.0)
    figures = sorted({key for row in rows for key in row})
    median = {key: statistics.median(row.get(key, 0.0) for row in rows) for key in figures}
    loss = median.get("loss_estimate_s", 0.0) * eval_iters / r.train.eval_iters
    extras = median["extras_s"]
    result = {"device": accelerator.device.type, "mixed_precision": accelerator.mixed_precision, "compiled": run.compiled,
              "params": run.n_params, "eval_iters": eval_iters, "loss_batches": r.train.eval_iters,
              "eval_samples": r.log.eval_samples, **{k: round(v, 4) for k, v in median.items()},
              "loss_estimate_at_eval_iters_s": round(loss, 3),
              "extras_ratio": round(extras / loss, 4) if loss else None, "end_of_run_s": round(end_of_run, 3),
              "card_sample_s": round(card_sample, 3) if card_sample is not None else None,
              "evaluations": rows, "cpu": cpu_name(), "load_average": os.getloadavg()[0]}
    report(result, o.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
