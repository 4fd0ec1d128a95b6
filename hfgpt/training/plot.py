"""out_dir/loss.png: train and val loss against iterations (bottom axis) and tokens (top axis).

    plot_losses(Path("out/metrics.jsonl"), Path("out/loss.png"), tokens_per_iter=768)
    plotter = Plotter(Path("out/metrics.jsonl"), Path("out/loss.png"), tokens_per_iter=768)
    plotter.request()      # at each evaluation: redrawn in a background thread
    plotter.finish()       # at the end: the last redraw done
    with plots_finished(): ...  # no redraw outlives the block, also when it ends in an error

train redraws it from metrics.jsonl at every evaluation, off the training thread (a redraw takes
0.5-1.8 s, which an evaluation would otherwise wait for); the model card shows it. Drawn with
matplotlib's Agg canvas directly (no pyplot, no change to the process's backend; one figure per
thread is safe), written to a temporary name and renamed, so a reader never sees half a file.
"""

from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from hfgpt.core.files import atomic_file
from hfgpt.training.metrics import read_metrics


def plot_losses(metrics_path: Path, png: Path, tokens_per_iter: int, title: str | None = None) -> bool:
    """Draw the curves of metrics.jsonl into png; False when there is nothing to draw yet."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_path)
    logged = [(r["iter"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["iter"], r["train_loss"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not logged and not evals:
        return False
    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if logged:
        ax.plot(*zip(*logged), color="C0", alpha=0.3, linewidth=0.8, label="train loss (each logged iteration)")
    if evals:
        iters, train, val = zip(*evals)
        ax.plot(iters, train, "o-", color="C0", markersize=3, label="train loss (estimate at each evaluation)")
        ax.plot(iters, val, "o-", color="C1", markersize=3, label="val loss (estimate at each evaluation)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (cross-entropy, nats per token)")
    last_iter = max([i for i, _ in logged] + [e[0] for e in evals])
    scale, unit = (1e6, "millions") if last_iter * tokens_per_iter >= 1e6 else (1e3, "thousands")
    top = ax.secondary_xaxis("top", functions=(lambda i: i * tokens_per_iter / scale,
                                               lambda t: t * scale / tokens_per_iter))
    top.set_xlabel(f"tokens seen ({unit})")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    with atomic_file(png) as f:
        fig.savefig(f, format="png")
    return True


class Plotter:
    """plot_losses in one background thread. request() asks for a redraw from metrics.jsonl as it is
    then; a request made while an earlier one still waits to start is already served by it (it reads
    the file when it starts). finish() waits for the last redraw. A redraw that failed (a full disk)
    raises in the thread that trains, at the next request() or at finish(), as it did when drawn there."""

    def __init__(self, metrics_path: Path, png: Path, tokens_per_iter: int, title: str | None = None):
        self.args = (metrics_path, png, tokens_per_iter, title)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfgpt-plot")
        self.futures: list[Future] = []
        OPEN.append(self)

    def request(self) -> None:
        self._raise_failures()
        if self.futures and not self.futures[-1].running() and not self.futures[-1].done():
            return  # waiting to start: it will read the rows written so far
        self.futures.append(self.pool.submit(plot_losses, *self.args))

    def finish(self) -> None:
        self.pool.shutdown(wait=True)
        if self in OPEN:
            OPEN.remove(self)
        self._raise_failures()

    def _raise_failures(self) -> None:
        done = [f for f in self.futures if f.done()]
        self.futures = [f for f in self.futures if not f.done()]
        for future in done:
            future.result()


OPEN: list[Plotter] = []  # the plotters not finished yet


@contextmanager
def plots_finished():
    """Wait, when the block ends, for every redraw started in it: a run that stops on an error leaves
    no redraw running (and no half-written temporary loss.png) past it. Their own errors are the
    finished plotters' to raise; here the block's error, if any, is the one that counts."""
    try:
        yield
    finally:
        while OPEN:
            OPEN.pop().pool.shutdown(wait=True)
