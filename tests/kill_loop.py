"""Kill a training run with SIGKILL at random moments, resume it each time, and check that it ends
exactly where an uninterrupted run ends (same per-iteration losses, bitwise-equal weights).

    python -m tests.kill_loop --kills=10 --seed=0          # from the repository root

Used by tests/test_checkpoint.py with fewer kills.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {
    "dataset": "kill", "tokenizer": "char", "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64,
    "batch_size": 16, "gradient_accumulation_steps": 1, "max_iters": 300, "eval_interval": 10, "eval_iters": 2,
    "log_interval": 1, "learning_rate": 3e-3, "warmup_iters": 10, "lr_decay_iters": 300, "min_lr": 3e-4,
    "dropout": 0.1, "device": "cpu", "compile": False, "keep_last": 2,
}


def _env() -> dict:
    # one thread: this tiny model gains nothing from more, and a busy machine would slow it 10x
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _train(workdir: Path, recipe: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hfgpt.train", str(recipe), *args], cwd=workdir, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _losses(out_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {}
    for row in rows:
        if "loss" in row:
            assert row["iter"] not in losses, f"iteration {row['iter']} logged twice"
            losses[row["iter"]] = row["loss"]
    return losses


def _logged(out_dir: Path) -> int:
    path = out_dir / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if '"loss"' in line) if path.exists() else 0


def run(workdir: Path, text: str, kills: int, seed: int, max_iters: int = 300, say=print) -> None:
    rng = random.Random(seed)
    (workdir / "text.txt").write_text(text, encoding="utf-8")
    paths = {}
    for name in ("straight", "killed"):
        paths[name] = workdir / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({**RECIPE, "source": str(workdir / "text.txt"), "out_dir": f"out-{name}",
                                               "max_iters": max_iters, "lr_decay_iters": max_iters}))

    start = time.time()
    assert _train(workdir, paths["straight"]).wait() == 0, "the uninterrupted run failed"
    say(f"uninterrupted run: {time.time() - start:.1f}s")

    out, attempts, done = workdir / "out-killed", 0, False
    while not done:
        resume = ["--init_from=resume"] if (out / "checkpoints").exists() and any(
            (p / "state.json").exists() for p in (out / "checkpoints").iterdir()) else []
        proc = _train(workdir, paths["killed"], *resume)
        attempts += 1
        if attempts <= kills:
            # wait until training has begun (or a random moment after start-up), then SIGKILL
            begun = _logged(out)
            deadline = time.time() + 60
            while proc.poll() is None and _logged(out) <= begun and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            ckpts = sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").exists() else []
            say(f"kill {attempts}: killed at ~iteration {_logged(out)}; checkpoints on disk: {ckpts}")
        else:
            code = proc.wait()
            assert code == 0, f"the final resumed run exited {code}"
            done = True

    straight, killed = _losses(workdir / "out-straight"), _losses(out)
    assert sorted(killed) == list(range(1, max_iters + 1)), "iterations missing or repeated"
    assert killed == straight, "per-iteration losses differ from the uninterrupted run"
    final = f"iter-{max_iters:06d}"
    a = load_file(workdir / "out-straight" / "checkpoints" / final / "model.safetensors")
    b = load_file(out / "checkpoints" / final / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "final weights differ"
    say(f"after {kills} kills and {attempts} starts: {len(killed)} iterations, losses identical to the "
        "uninterrupted run, final weights bitwise equal")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_iters", type=int, default=300)
    p.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    args = p.parse_args(argv)
    text = Path(args.text).read_text(encoding="utf-8")[:200_000]
    with tempfile.TemporaryDirectory() as d:
        run(Path(d), text, args.kills, args.seed, args.max_iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
