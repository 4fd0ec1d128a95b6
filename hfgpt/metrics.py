"""out_dir/metrics.jsonl: one JSON object per log line and per evaluation, written by the main process.

    metrics = MetricsLog(Path("out/metrics.jsonl"), enabled=accelerator.is_main_process, resume_iter=None)
    metrics.write(iter=10, loss=2.5, lr=1e-3, tokens_per_sec=12000.0, elapsed_s=3.2)

A resumed run keeps the lines up to the iteration it resumes from and appends after them, so the
file reads as one run even when the first attempt went further than its last checkpoint.
"""

import json
import os
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path, enabled: bool, resume_iter: int | None = None):
        self.file = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_iter is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("iter", 0) <= resume_iter]
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
        self.file = open(path, "a" if resume_iter is not None else "w", encoding="utf-8")

    def write(self, **fields) -> None:
        if self.file:
            self.file.write(json.dumps(fields) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
