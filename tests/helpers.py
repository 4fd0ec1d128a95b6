"""Helpers the tests share (fixtures live in conftest.py).

    error_lines(capsys)          # the "error: ..." lines a command printed to stderr
    read_metrics(out_dir)        # the rows of out_dir/metrics.jsonl
    run(args, cwd)               # a command in a subprocess, offline, importing this checkout
"""

import subprocess
from pathlib import Path

from hfgpt.training.metrics import read_metrics as _read_metrics_file
from tests.conftest import run_env


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def read_metrics(out_dir) -> list[dict]:
    return _read_metrics_file(Path(out_dir) / "metrics.jsonl")


def run(args: list[str], cwd, env: dict | None = None, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env or run_env(), cwd=cwd, timeout=timeout, **kwargs)
