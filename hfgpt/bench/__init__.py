"""Benchmarks of hfgpt's steps: training throughput, sampling speed, tokenization throughput, GPU training,
an evaluation's extras, the optimizer step's host cost, fine-tuning memory, time to nanoGPT's loss.

    python -m hfgpt.bench train recipes/shakespeare_char_cpu.yaml
    python -m hfgpt.bench sample out-shakespeare-char --max_new_tokens=256
    python -m hfgpt.bench prepare recipes/my_dataset.yaml
    python -m hfgpt.bench gpu --nanogpt=../nanoGPT          # a CUDA GPU: hfgpt beside nanoGPT's bench.py
    python -m hfgpt.bench evaluation recipes/shakespeare_char.yaml --loss_batches=2   # an evaluation's extras
    python -m hfgpt.bench optim --optimizer=muon --device=meta   # ops and host time of an optimizer step, GPT-2 124M
    python -m hfgpt.bench finetune --model=gpt2-medium --block_size=512
    python -m hfgpt.bench race recipes/shakespeare_char_cpu_fast.yaml --nanogpt=../nanoGPT  # time to nanoGPT's loss

Each mode lives in its own module (hfgpt.bench.train, .sample, .prepare, .gpu, .evaluation, .optim,
.finetune, .race), prints its figures and writes them as JSON with `report`; `measure` times a child process.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from hfgpt.core.errors import UserError
from hfgpt.core.files import atomic_write


def report(result: dict, json_path: str | None) -> None:
    """Print `key: value` lines and, when json_path is given, write the result there atomically."""
    for key, value in result.items():
        shown = f"{value:,.2f}" if isinstance(value, float) else value
        print(f"{key}: {shown}")
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(result, indent=2) + "\n")


def child_env(**extra: str) -> dict:
    """The environment for a child process that runs this very hfgpt (not another installed copy)."""
    path = os.pathsep.join(filter(None, [str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def nanogpt_classes(repo: str | Path):
    """GPT and GPTConfig from the model.py of a nanoGPT clone (for the --nanogpt comparisons)."""
    repo = Path(repo)
    if not (repo / "model.py").is_file():
        raise UserError(f"--nanogpt={repo} has no model.py: give the folder of a nanoGPT clone")
    sys.path.insert(0, str(repo))
    try:
        from model import GPT, GPTConfig  # nanoGPT's model.py
    finally:
        sys.path.remove(str(repo))
    return GPT, GPTConfig


def cpu_name() -> str:
    """The CPU's model name, as lscpu shows it."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return "?"


# --- a child process, measured ------------------------------------------------------------------

class Sampler(threading.Thread):
    """Largest sum of PSS over a process and its descendants, read from /proc every 0.1 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.stop = pid, 0, threading.Event()

    def run(self):
        while not self.stop.wait(0.1):
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in _tree(self.pid)))


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        try:
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
        i += 1
    return pids


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except OSError:
        return 0


def measure(cmd: list[str], env: dict | None = None, cwd: str | Path | None = None, pss: bool = True,
            lines: bool = False) -> dict:
    """Run cmd (in cwd); its wall time, CPU time (user + system) and peak memory (with pss: the
    largest total PSS of its process tree, sampled every 0.1 s by a thread here), with `lines` its
    output's lines and the seconds since its start at which each came ("lines": [(seconds, line)]);
    a UserError with the end of its output when it fails."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(child.pid)
    if pss:
        sampler.start()
    timed = [(time.perf_counter() - start, line) for line in child.stdout]
    output = "".join(line for _, line in timed)
    _, status, usage = os.wait4(child.pid, 0)  # usage: the child's and its waited-for descendants'
    wall = time.perf_counter() - start
    if pss:
        sampler.stop.set()
        sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise UserError(f"{' '.join(cmd)} failed ({child.returncode}):\n{output[-3000:]}")
    rss_mb = usage.ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10)  # bytes on macOS, KB on Linux
    return {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": rss_mb,
            "peak_pss_total_mb": sampler.peak_kb / 1024 if pss else None, **({"lines": timed} if lines else {})}
