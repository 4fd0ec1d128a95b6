"""out_dir/metrics.jsonl: one JSON object per log line and per evaluation, written by the main process
and passed on to the run's trackers (tensorboard, wandb, ...: log_with in the recipe).

    metrics = MetricsLog(Path("out/metrics.jsonl"), enabled=accelerator.is_main_process, resume_iter=None,
                         accelerator=accelerator)
    metrics.write(iter=10, loss=2.5, lr=1e-3, tokens_per_sec=12000.0, elapsed_s=3.2)

Every field of a row reaches the trackers at step `iter`, whatever the loop puts in it (mfu
included), with lists spread out as name/0, name/1, ... A resumed run keeps the lines up to the
iteration it resumes from and appends after them, so the file reads as one run even when the
first attempt went further than its last checkpoint.
"""

import json
from pathlib import Path

from hfgpt.core.files import atomic_write


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl file; none if it does not exist."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tracker_values(fields: dict) -> dict:
    """A row as trackers take it: no `iter` (it is the step), lists spread out, None left out."""
    values = {}
    for key, value in fields.items():
        if key == "iter" or value is None:
            continue
        if isinstance(value, (list, tuple)):
            values.update({f"{key}/{i}": v for i, v in enumerate(value)})
        else:
            values[key] = value
    return values


class MetricsLog:
    def __init__(self, path: Path, enabled: bool, resume_iter: int | None = None, accelerator=None):
        self.file, self.accelerator = None, accelerator
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_iter is not None and path.exists():
            kept = [json.dumps(row) for row in read_metrics(path) if row.get("iter", 0) <= resume_iter]
            atomic_write(path, "".join(line + "\n" for line in kept))
        self.file = open(path, "a" if resume_iter is not None else "w", encoding="utf-8")

    def write(self, **fields) -> None:
        if not self.file:
            return
        self.file.write(json.dumps(fields) + "\n")
        self.file.flush()
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log(tracker_values(fields), step=fields["iter"])

    def close(self) -> None:
        if self.file:
            self.file.close()
