"""Kill a training run with SIGKILL at random moments, half of them while a checkpoint or the model is
being saved, rerun it each time, and check that it ends exactly where an uninterrupted run ends.

    python -m tests.tools.kill_loop --kills=10 --seed=0     # from the repository root; --kills=100 runs longer
    python -m tests.tools.kill_loop --kills=10 --explicit   # rerun as a user would by hand (see next_args)

The run's recipe says init_from: auto, and every start is the identical command line, as a cluster
requeues a job; one more stop, at a random kill's place, is a SIGUSR1 (a cluster's "time is nearly
up"): the run checkpoints and exits 138, and the same command continues it. With --explicit the
recipe says init_from: scratch and each rerun adds what a user would (--init_from=resume once a
checkpoint exists, else --overwrite_out_dir=True), with SIGKILLs only.

After every kill: each checkpoint in out_dir/checkpoints is whole (every file loads) or absent, and
the model in out_dir loads. At the end: no temporary file or folder anywhere in out_dir (the lock
released too), every iteration logged once with the uninterrupted run's loss, and the final weights
(checkpoint and out_dir) bitwise equal to the uninterrupted run's.

Each run is a child forked from this process after it has imported hfgpt (and torch), so a start
costs a fraction of a second instead of a fresh interpreter's imports; the child is a real process,
killed by a real SIGKILL while it writes real files. tests/test_checkpoint.py runs this with 10
kills and a SIGUSR1, the same command line every time, as a subprocess.
"""

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # this tiny model gains nothing from more; a busy machine loses 10x
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import hfgpt.training.loop  # noqa: E402,F401  (imported before forking: the children start warm)
from hfgpt import prepare, train  # noqa: E402
from hfgpt.training.metrics import parse_metrics, read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]  # the repository root (this file is tests/tools/NAME.py)
RECIPE = {
    "dataset": "kill", "tokenizer": "char", "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64,
    "batch_size": 16, "gradient_accumulation_steps": 1, "max_iters": 100, "eval_interval": 5, "eval_iters": 2,
    "log_interval": 1, "learning_rate": 3e-3, "warmup_iters": 5, "lr_decay_iters": 100, "min_lr": 3e-4,
    "dropout": 0.1, "device": "cpu", "mixed_precision": "no", "compile": False, "keep_last": 2,
}


def start(command, args: list[str], log: Path) -> int:
    """Fork a child that runs `command.main(args)` with its output in `log`; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = command.main(args)
    finally:
        os._exit(code)


EXITED: dict[int, int] = {}  # pid -> exit code of children reaped by running()


def wait(pid: int) -> int:
    if pid not in EXITED:
        EXITED[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return EXITED[pid]


def running(pid: int) -> bool:
    if pid in EXITED:
        return False
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        EXITED[pid] = os.waitstatus_to_exitcode(status)
    return not done


def last_logged(out: Path) -> int:
    """The last iteration in metrics.jsonl with a training loss (0 when none)."""
    logged = [row["iter"] for row in read_metrics(out / "metrics.jsonl") if "loss" in row]
    return logged[-1] if logged else 0


def saving(out: Path, what: tuple[str, ...] = ("model", "checkpoint")) -> bool:
    """Whether the model (out_dir/.saving-*) or a checkpoint (checkpoints/.tmp-iter-*) is being saved."""
    places = {"model": (out, ".saving-"), "checkpoint": (out / "checkpoints", ".tmp-iter-")}
    for folder, prefix in (places[w] for w in what):
        try:
            if any(e.name.startswith(prefix) for e in os.scandir(folder)):
                return True
        except FileNotFoundError:
            pass
    return False


def check_whole(out: Path) -> list[str]:
    """Every checkpoint whole (each file loads) and the model in out_dir loadable; returns the names."""
    ckpts = out / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) if ckpts.is_dir() else []
    for name in names:
        folder = ckpts / name
        state = json.loads((folder / "state.json").read_text())  # a folder without it is half a checkpoint
        assert name == f"iter-{state['iter']:06d}", name
        for f in ("model.safetensors", "optimizer.safetensors", "rng-0.safetensors"):
            load_file(folder / f)
        for f in ("optimizer.json", "config.json"):
            json.loads((folder / f).read_text())
    if (out / "model.safetensors").exists():
        load_file(out / "model.safetensors")
        json.loads((out / "config.json").read_text())
    return names


def losses(out: Path) -> dict[int, float]:
    found, (rows, bad) = {}, parse_metrics((out / "metrics.jsonl").read_text())
    assert not bad, f"{bad} partial line(s) left in metrics.jsonl"
    for row in rows:
        if "loss" in row:
            assert row["iter"] not in found, f"iteration {row['iter']} logged twice"
            found[row["iter"]] = row["loss"]
    return found


def next_args(out: Path, auto: bool) -> list[str]:
    """What is rerun: with init_from: auto nothing but the same command line; else what a user adds by
    hand: resume when a checkpoint exists, else start over the run that left only a log."""
    if auto:
        return []
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any((p / "state.json").exists() for p in ckpts.iterdir()):
        return ["--init_from=resume"]
    return ["--overwrite_out_dir=True"] if (out / "metrics.jsonl").exists() or (out / "config.json").exists() else []


def newest(out: Path) -> int:
    """The iteration of the newest published checkpoint (-1 when none)."""
    ckpts = out / "checkpoints"
    names = [p.name for p in ckpts.iterdir() if p.name.startswith("iter-")] if ckpts.is_dir() else []
    return max((int(n.split("-")[1]) for n in names), default=-1)


def kill_when(pid: int, out: Path, mode: str, rng: random.Random) -> str | None:
    """SIGKILL the child: while it saves the model or a checkpoint (after letting 0-2 checkpoints
    through), a few iterations into training, or during start-up. Returns what it was doing, or
    None when it finished first."""
    deadline = time.time() + 120
    if mode in ("model", "checkpoint"):
        let_through, first = rng.randint(0, 2), newest(out)
        while running(pid) and time.time() < deadline:
            if newest(out) > first:
                first, let_through = newest(out), let_through - 1
            if let_through <= 0 and saving(out, (mode,)):
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.01))  # somewhere in the save: files, rename, prune, card
    elif mode == "training":
        target = max(newest(out), 0) + rng.randint(1, 8)
        while running(pid) and last_logged(out) < target and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.02))
    else:  # start-up: setup, the lock, the leftovers, the resume
        time.sleep(rng.uniform(0.0, 1.0))
    what = ("while saving the model" if saving(out, ("model",)) else
            "while saving a checkpoint" if saving(out, ("checkpoint",)) else f"outside a save ({mode} kill)")
    if not running(pid):
        return None
    os.kill(pid, signal.SIGKILL)
    wait(pid)
    return what


def usr1_when(pid: int, out: Path, rng: random.Random) -> int:
    """SIGUSR1 a few iterations into training; returns the child's exit code (138: it checkpointed)."""
    target, deadline = max(newest(out), 0) + rng.randint(1, 8), time.time() + 120
    while running(pid) and last_logged(out) < target and time.time() < deadline:
        time.sleep(0.005)
    if running(pid):
        os.kill(pid, signal.SIGUSR1)
    return wait(pid)


def run(workdir: Path, text: str, kills: int, seed: int, max_iters: int | None = None, say=print,
        auto: bool = True) -> dict:
    """The kill loop in `workdir`; max_iters defaults to enough iterations for every kill to land.
    auto: the recipe says init_from: auto, every start is the same command, and one more stop is a
    SIGUSR1 (see the module docstring)."""
    rng, max_iters = random.Random(seed), max_iters or 6 * kills + 40
    usr1_at = rng.randint(1, kills) if auto else None  # the start that gets the SIGUSR1 instead of a kill
    os.chdir(workdir)
    (workdir / "text.txt").write_text(text, encoding="utf-8")
    recipes = {}
    for name in ("straight", "killed"):
        recipes[name] = workdir / f"{name}.yaml"
        origin = {"init_from": "auto"} if auto and name == "killed" else {}
        recipes[name].write_text(yaml.safe_dump({**RECIPE, "source": str(workdir / "text.txt"), "out_dir": f"out-{name}",
                                                 "max_iters": max_iters, "lr_decay_iters": max_iters, **origin}))
    t0 = time.time()
    assert wait(start(prepare, [str(recipes["straight"])], workdir / "prepare.log")) == 0, "prepare failed"
    straight = start(train, [str(recipes["straight"])], workdir / "straight.log")  # alongside the killed line

    out, attempts, during_save, usr1 = workdir / "out-killed", 0, 0, 0
    while True:
        attempts += 1
        log = workdir / f"attempt-{attempts}.log"
        pid = start(train, [str(recipes["killed"]), *next_args(out, auto)], log)
        if attempts > kills + usr1:
            code = wait(pid)
            assert code == 0, f"the final run exited {code}: {log.read_text()[-3000:]}"
            break
        if attempts == usr1_at:
            code = usr1_when(pid, out, rng)
            assert code == 138, f"run {attempts} exited {code} after SIGUSR1, not 138: {log.read_text()[-3000:]}"
            assert newest(out) == last_logged(out), "SIGUSR1 did not checkpoint the iteration it stopped at"
            usr1 += 1
            say(f"SIGUSR1 {usr1} at iteration {last_logged(out)}: exit 138 with a checkpoint of that iteration")
            continue
        mode = rng.choice(["model", "checkpoint", "model", "checkpoint", "training", "start-up"])
        what = kill_when(pid, out, mode, rng)
        if what is None:  # it reached max_iters before its kill
            assert wait(pid) == 0, f"run {attempts} exited {wait(pid)}: {log.read_text()[-3000:]}"
            say(f"run {attempts} finished before its kill")
            kills = attempts - 1 - usr1
            break
        during_save += what.startswith("while saving")
        names = check_whole(out)
        say(f"kill {attempts - usr1} {what} at ~iteration {last_logged(out)}; checkpoints: {', '.join(names) or 'none'}")
    assert wait(straight) == 0, f"the uninterrupted run failed: {(workdir / 'straight.log').read_text()[-3000:]}"

    check_whole(out)
    hidden = [str(p.relative_to(out)) for p in out.rglob(".*")]
    assert not hidden, f"left in {out}: {hidden}"
    a, b = losses(workdir / "out-straight"), losses(out)
    assert sorted(b) == list(range(1, max_iters + 1)), "iterations missing or repeated"
    assert a == b, "per-iteration losses differ from the uninterrupted run"
    for folder in (Path("checkpoints") / f"iter-{max_iters:06d}", Path(".")):
        x, y = load_file(workdir / "out-straight" / folder / "model.safetensors"), load_file(out / folder / "model.safetensors")
        assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x), f"weights differ in {folder}"
    result = {"kills": kills, "usr1": usr1, "during_save": during_save, "starts": attempts, "iterations": len(b),
              "identical_command": auto, "seconds": round(time.time() - t0, 1)}
    say(f"after {kills} kills ({during_save} during a save), {usr1} SIGUSR1 and {attempts} starts"
        f"{' of the same command line' if auto else ''}: {len(b)} iterations, losses identical to the uninterrupted "
        f"run, final weights bitwise equal, nothing left behind ({result['seconds']}s)")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_iters", type=int, default=None, help="default: 6 x kills + 40")
    p.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    p.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    p.add_argument("--explicit", action="store_true", help="init_from: scratch, rerun with --init_from=resume or "
                   "--overwrite_out_dir=True as a user would, SIGKILLs only")
    args = p.parse_args(argv)
    text = Path(args.text).read_text(encoding="utf-8")[:200_000]
    with tempfile.TemporaryDirectory() as d:
        result = run(Path(d), text, args.kills, args.seed, args.max_iters, auto=not args.explicit)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
