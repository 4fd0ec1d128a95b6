"""Helpers the tests share (fixtures live in conftest.py).

    error_lines(capsys)                  # the "error: ..." lines a command printed to stderr
    read_metrics(out_dir)                # the rows of out_dir/metrics.jsonl, every line whole
    read_metrics(out_dir, running=True)  # a run still writing it: [] before the file, a partial line skipped
    run(args, cwd)                       # a command in a subprocess, offline, importing this checkout
"""

import subprocess
import sys
from pathlib import Path

from hfgpt.training.metrics import parse_metrics
from tests.conftest import run_env

# accelerate's command, next to this Python (the venv need not be on PATH)
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def read_metrics(out_dir, running: bool = False) -> list[dict]:
    """The rows of out_dir/metrics.jsonl. A run that has ended wrote every line whole and the file must
    be there; running=True reads a run still at work, as hfgpt's own readers do."""
    path = Path(out_dir) / "metrics.jsonl"
    if running and not path.exists():
        return []
    rows, bad = parse_metrics(path.read_text(encoding="utf-8"))
    assert running or not bad, f"{path}: {bad} line(s) that are not a JSON object"
    return rows


def run(args: list[str], cwd, env: dict | None = None, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env or run_env(), cwd=cwd, timeout=timeout, **kwargs)


def reused_pid(make) -> tuple[subprocess.Popen, Path]:
    """A live process whose PID was a dead writer's: make(f"{host}-{pid}") is called for the next
    PIDs the system will hand out (each makes a temporary name in place, as a writer would), then a
    process is started, which gets one of them, as PID 1 of a restarted container or a busy
    machine's PIDs coming round again. Returns the process (kill it) and the path with its PID;
    the other paths are removed."""
    import shutil
    import time

    from hfgpt.core.files import owner_tag

    host = owner_tag().rsplit("-", 1)[0]
    for _ in range(5):
        last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
        made = {pid: make(f"{host}-{pid}") for pid in range(last + 1, last + 400)}
        time.sleep(1.2)  # the process starts later than the entries were made, by more than a second
        proc = subprocess.Popen(["sleep", "300"])
        mine = made.pop(proc.pid, None)
        for path in made.values():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if mine is not None:
            return proc, mine
        proc.kill()
        proc.wait()
    raise RuntimeError("could not get a PID that a leftover names (PIDs are not handed out in order here?)")


def without_file_permissions_bypass(args: list[str]) -> list[str]:
    """`args` run so that file permissions apply: as is for a normal user; for root, without the
    capabilities that let root read any file (setpriv), as a normal user would be."""
    import os
    import shutil

    if os.geteuid() != 0:
        return args
    caps = "-dac_override,-dac_read_search"
    return [shutil.which("setpriv"), f"--inh-caps={caps}", f"--bounding-set={caps}", *args]
