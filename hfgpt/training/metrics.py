"""out_dir/metrics.jsonl: one JSON object per log line and per evaluation, written by the main process
and passed on to the run's trackers (tensorboard, wandb, ...: log_with in the recipe).

    metrics = MetricsLog(Path("out/metrics.jsonl"), enabled=accelerator.is_main_process, resume_iter=None,
                         accelerator=accelerator)
    metrics.write(iter=10, loss=2.5, lr=1e-3, tokens_per_sec=12000.0, elapsed_s=3.2)

Every field of a row reaches the trackers at step `iter`, whatever the loop puts in it (mfu
included), with lists spread out as name/0, name/1, ... A resumed run keeps the lines up to the
iteration it resumes from and appends after them, so the file reads as one run even when the
first attempt went further than its last checkpoint; an evaluation-only run appends its row. A
line that is not a JSON object (the partial last line of a run killed while writing it) is
skipped by every reader and dropped, with a note, when a run continues the file.
"""

import json
import os
from pathlib import Path

from hfgpt.core.files import atomic_write


def parse_metrics(text: str) -> tuple[list[dict], int]:
    """The rows of metrics.jsonl text and the number of lines that are not a JSON object."""
    rows, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl file (none if it does not exist), without unreadable lines."""
    return parse_metrics(path.read_text(encoding="utf-8"))[0] if path.exists() else []


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
    def __init__(self, path: Path, enabled: bool, resume_iter: int | None = None, accelerator=None,
                 append: bool = False):
        """A new file, or with resume_iter the rows up to that iteration kept, or with append every row.
        A new file is made with its first row: a run that stops before logging anything leaves none
        (an empty metrics.jsonl would count as another run's and block the next start)."""
        self.file, self.accelerator, self.path, self.mode = None, accelerator, path, None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        keep = append or resume_iter is not None
        if keep and path.exists():
            text = path.read_text(encoding="utf-8")
            rows, bad = parse_metrics(text)
            kept = [row for row in rows if append or row.get("iter", 0) <= resume_iter]
            if bad:
                print(f"note: dropped {bad} unreadable line{'s' if bad > 1 else ''} of {path} (the partial last line "
                      "of a run killed while writing it)")
            if bad or len(kept) < len(rows) or (text and not text.endswith("\n")):
                atomic_write(path, "".join(json.dumps(row) + "\n" for row in kept))
        self.mode = "a" if keep else "w"

    def write(self, **fields) -> None:
        if self.mode is None:
            return
        if self.file is None:
            self.file = open(self.path, self.mode, encoding="utf-8")
        self.file.write(json.dumps(fields) + "\n")
        self.file.flush()
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log(tracker_values(fields), step=fields["iter"])

    def sync(self) -> None:
        """Put the rows written so far on disk (before a checkpoint that they lead up to is published)."""
        if self.file:
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file:
            self.file.close()
