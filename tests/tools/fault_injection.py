"""Kill prepare, or a training run that pushes to the Hub in the background, with SIGKILL at random
moments; run it again after each kill; check what is left once a run finishes.

    python -m tests.tools.fault_injection --target=prepare --kills=10 --seed=0     # from the repository root
    python -m tests.tools.fault_injection --target=push --kills=10 --seed=0

prepare: two URLs with the same file name, served slowly by a local server (tests/tools/local_server.py),
tokenized into many shards; the runs take in turn the target recipe and one that makes other
token files, so a kill can land in a download, the tokenizing or the publishing over an older
preparation. After every kill the dataset folder is complete or has no meta.json (meta.json's shards
all there at their sizes, no other token file). After the last run: no temporary file or folder
anywhere in the dataset folder (downloads/ included), and the token files, tokenizer and meta.json
are byte-identical to those of an uninterrupted prepare.

push: a tiny training run with push_to_hub and hub_strategy: checkpoint (a push at every
evaluation, with its checkpoint as last-checkpoint/) against tests/tools/fake_hub.py (slow commits, so
kills land during uploads), resumed with --init_from=resume after each kill. After the last run:
no .push-* snapshot in out_dir and no temporary file in the client's HF_HOME (what hf_xet stages
in the test's local CAS, the Hub's side, is counted); every commit on the Hub holds a whole model; the newest holds every
file of out_dir and of the newest checkpoint, byte-identical (the card excepted: the Hub's names the
repo); and the repo downloads back and loads and generates with transformers.

Used by tests/test_prepare.py and tests/test_hub.py with fewer kills.
"""

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository root (this file is tests/tools/NAME.py)
TOKEN = "hf_" + "FaultInjection" * 3
USER = "fault-user"


def _env() -> dict:
    # one thread: these tiny jobs gain nothing from more, and a busy machine would slow them 10x;
    # faulthandler: a run that hangs prints every thread's stack when _finish aborts it
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONFAULTHANDLER="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _start(module: str, args: list, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `python -m module args`; its output goes to cwd/runs.log (appended, one header per run)."""
    log = open(cwd / "runs.log", "a")
    log.write(f"\n==== {module} {' '.join(map(str, args))}\n")
    log.flush()
    with log:
        return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env or _env(),
                                stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, cwd: Path, what: str, timeout: float = 300) -> None:
    """Wait for a run that must succeed. One that hangs is aborted (faulthandler prints its stacks
    into runs.log) and fails the test with the log's end, instead of hanging the test suite."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        code = f"nothing within {timeout:.0f}s"
    if code != 0:
        raise AssertionError(f"{what}: exited {code}; the end of {cwd / 'runs.log'}:\n"
                             + (cwd / "runs.log").read_text()[-6000:])


def _kill(proc: subprocess.Popen) -> bool:
    """SIGKILL, if it still runs; True when it was killed (not finished)."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _hidden(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")) if folder.exists() else []


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------- prepare

PREPARE = {"dataset": "faults", "tokenizer": "char", "block_size": 64, "shard_size": 100_000, "num_proc": 2}


def _prepare_state(folder: Path) -> str:
    """Check a killed prepare's folder: complete (meta.json, its shards at their sizes, no other
    token file) or without meta.json. Returns what the kill left, for the report."""
    from hfgpt.data.meta import read_meta, shard_problem
    from hfgpt.data.shards import TOKEN_FILE

    meta = read_meta(folder) if folder.is_dir() else None
    if meta is not None:
        assert shard_problem(folder, meta) is None, shard_problem(folder, meta)
        listed = {e["file"] for entries in meta["shards"].values() for e in entries}
        assert {p.name for p in folder.iterdir() if TOKEN_FILE.match(p.name)} == listed, "token files meta.json lacks"
        assert (folder / "tokenizer" / "tokenizer.json").is_file()
    left = sorted({"its work folder" if name.startswith(".prepare-") else "a partial download"
                   if name.startswith("downloads/.") else name for name in _hidden(folder)})
    tokens = any(TOKEN_FILE.match(p.name) for p in folder.iterdir()) if folder.is_dir() else False
    state = "complete" if meta else "token files without meta.json (a publish was cut short)" if tokens else "nothing published"
    return state + (f"; left {' and '.join(left)}" if left else "")


def _work_begins(proc: subprocess.Popen, folder: Path) -> float:
    """Wait until a prepare starts writing (a temporary file or folder shows in the dataset folder or
    downloads/) or ends; returns the time. Python's start-up is not what is tested."""
    while proc.poll() is None and not _hidden(folder):
        time.sleep(0.01)
    return time.time()


def run_prepare(workdir: Path, text: str, kills: int, seed: int, rate: float = 4e6, say=print) -> dict:
    from tests.tools.local_server import LocalServer

    rng = random.Random(seed)
    served = workdir / "served"
    half = len(text) // 2
    for name, part in {"a": text[:half], "b": text[half:]}.items():
        (served / name).mkdir(parents=True)
        (served / name / "input.txt").write_text(part, encoding="utf-8")
    server = LocalServer(served, ranges=True, rate=rate)
    try:
        source = [f"{server.url}/a/input.txt", f"{server.url}/b/input.txt"]
        recipes = {}
        for name, values in {"target": {}, "other": {"shard_size": 70_000}, "reference": {"data_dir": "data-ref"}}.items():
            recipes[name] = workdir / f"{name}.yaml"
            recipes[name].write_text(yaml.safe_dump({**PREPARE, "source": source, **values}))
        reference = workdir / "data-ref" / "faults"
        proc, start = _start("hfgpt.prepare", [recipes["reference"]], workdir), time.time()
        began = _work_begins(proc, reference)
        _finish(proc, workdir, "the uninterrupted prepare")
        work = time.time() - began
        say(f"uninterrupted prepare: {time.time() - start:.1f}s, {work:.1f}s of it downloading, tokenizing and "
            "publishing")

        folder, runs, killed, phases = workdir / "data" / "faults", 0, 0, Counter()
        while killed < kills:
            which = ("target", "other")[runs % 2]  # each run has work: the other recipe's files are there
            proc = _start("hfgpt.prepare", [recipes[which]], workdir)
            runs += 1
            _work_begins(proc, folder)  # then a random moment of the work
            time.sleep(rng.uniform(0, 1.2 * work))  # some runs finish: later kills land over a whole folder
            if _kill(proc):
                killed += 1
                phase = _prepare_state(folder)
                phases[phase] += 1
                say(f"kill {killed} ({which}): {phase}")
            else:
                assert proc.returncode == 0, f"prepare ({which}) exited {proc.returncode}"
        runs += 1
        _finish(_start("hfgpt.prepare", [recipes["target"]], workdir), workdir, "the last prepare")
    finally:
        server.stop()

    assert _hidden(folder) == [], f"left behind: {_hidden(folder)}"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(reference)) for p in reference.rglob("*") if p.is_file())
    differ = [f for f in files if f != "meta.json" and _sha256(folder / f) != _sha256(reference / f)]
    assert not differ, f"not byte-identical to the uninterrupted prepare: {differ}"
    meta, expected = (json.loads((f / "meta.json").read_text()) for f in (folder, reference))
    for entry in [e for m in (meta, expected) for entries in m["shards"].values() for e in entries]:
        del entry["mtime_ns"]  # when each token file was written; its sha256 must be equal
    changed = {k for k in meta.keys() | expected.keys() if meta.get(k) != expected.get(k)}
    # both hashes take in the source files' paths, which differ (data/ and data-ref/)
    assert changed <= {"source_stamp", "source_sha256"}, {k: (meta.get(k), expected.get(k)) for k in changed}
    shards = sum(len(v) for v in meta["shards"].values())
    say(f"after {kills} kills and {runs} runs: {len(files)} files ({shards} token files) byte-identical to the "
        f"uninterrupted prepare, no temporary file left; what the kills left: {dict(phases)}")
    return {"kills": kills, "runs": runs, "phases": dict(phases), "files": len(files)}


# ------------------------------------------------------------------------------------------- push

PUSH = {
    "dataset": "faults", "tokenizer": "char", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32,
    "batch_size": 8, "gradient_accumulation_steps": 1, "eval_interval": 4, "eval_iters": 1, "log_interval": 1,
    "learning_rate": 3e-3, "warmup_iters": 2, "min_lr": 3e-4, "dropout": 0.0, "device": "cpu",
    "mixed_precision": "no", "compile": False, "keep_last": 2, "push_to_hub": True, "hub_strategy": "checkpoint",
    "hub_model_id": f"{USER}/faults",
}
WHOLE = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "README.md",
         "last-checkpoint/state.json", "last-checkpoint/model.safetensors", "last-checkpoint/optimizer.safetensors"}


def _logged(out_dir: Path) -> int:
    from hfgpt.training.metrics import read_metrics

    return sum(1 for row in read_metrics(out_dir / "metrics.jsonl") if "loss" in row)


def _has_checkpoint(out_dir: Path) -> bool:
    root = out_dir / "checkpoints"
    return root.is_dir() and any((p / "state.json").is_file() for p in root.iterdir() if not p.name.startswith("."))


def run_push(workdir: Path, text: str, kills: int, seed: int, lfs: bool = False, say=print) -> dict:
    from hfgpt.core.layout import latest
    from tests.tools.fake_hub import FakeHub, client_env

    rng = random.Random(seed)
    # each run is killed within 8 logged iterations of its start (and 0.3 s): every run has iterations left
    max_iters = 40 + 30 * kills
    (workdir / "text.txt").write_text(text, encoding="utf-8")
    recipe = workdir / "push.yaml"
    recipe.write_text(yaml.safe_dump({**PUSH, "source": str(workdir / "text.txt"), "out_dir": "out",
                                      "max_iters": max_iters, "lr_decay_iters": max_iters}))
    out, repo = workdir / "out", PUSH["hub_model_id"]
    with FakeHub(lfs_mode="lfs" if lfs else "xet", xet_dir=str(workdir / "xet-cas"), token=TOKEN, user=USER) as hub:
        env = client_env(hub, _env(), workdir / "hf-home", TOKEN, "lfs" if lfs else "xet")
        hub.commit_delay = 0.5  # uploads take a while: kills land during them
        runs = killed = 0
        while True:
            resume = ["--init_from=resume"] if _has_checkpoint(out) else []
            proc = _start("hfgpt.train", [recipe, *resume], workdir, env)
            runs += 1
            if killed == kills:
                _finish(proc, workdir, "the last run")
                break
            # once training runs (and has a checkpoint to resume from), a random moment of its first
            # iterations: a kill by the clock could come after the run's last iteration, and no run
            # that finishes could ever be killed again
            begun, deadline, then = _logged(out), time.time() + 120, rng.randint(1, 8)
            while proc.poll() is None and not (_logged(out) >= begun + then and _has_checkpoint(out)) and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            if not _kill(proc):
                raise AssertionError(f"run {runs} ended (exit {proc.returncode}) before kill {killed + 1}, at iteration "
                                     f"{_logged(out)} of {max_iters}; the end of {workdir / 'runs.log'}:\n"
                                     + (workdir / "runs.log").read_text()[-6000:])
            killed += 1
            commits = hub.history("model", repo) if ("model", repo) in hub.repos else []
            say(f"kill {killed}: ~iteration {_logged(out)}, snapshots pending {len(list(out.glob('.push-*')))}, "
                f"{len(commits) - 1} commits on the Hub")
        hub.commit_delay = 0.0

        assert not list(out.glob(".push-*")) and not (out / ".cache").exists(), _hidden(out)
        assert not _hidden(workdir / "hf-home"), _hidden(workdir / "hf-home")  # the client's cache
        xet_left = _hidden(workdir / "xet-cas")  # hf_xet's own staging, in the test's local CAS
        commits = hub.history("model", repo)[1:]
        half = [c["title"] for c in commits if not WHOLE <= set(c["files"])]
        assert not half, f"commits without a whole model: {half}"
        files = {path: entry.sha256 for path, entry in commits[-1]["files"].items()
                 if path != ".gitattributes" and not path.endswith("README.md")}
        newest = latest(out)[0]
        expected = {str(p.relative_to(out)): _sha256(p) for p in out.rglob("*")
                    if p.is_file() and p.name != "README.md" and not p.relative_to(out).parts[0].startswith(("checkpoints", "."))}
        expected |= {f"last-checkpoint/{p.name}": _sha256(p) for p in newest.iterdir() if p.name != "README.md"}
        assert files == expected, f"the Hub differs from out_dir: {set(files) ^ set(expected)}"
        loaded = _download_and_load(repo, client_env(hub, _env(), workdir / "hf-home-2", TOKEN), workdir)
    assert loaded["weights"] == _sha256(out / "model.safetensors") and loaded["text"].startswith("\n")
    say(f"after {kills} kills and {runs} runs ({max_iters} iterations, {len(commits)} commits): no snapshot left, "
        f"every commit a whole model, the newest byte-identical to out_dir and {newest.name}; downloaded back, "
        f"it loads ({loaded['params']:,} parameters) and generates; hf_xet left {len(xet_left)} temporary "
        "folders of killed uploads in the test's local CAS (its own staging, the Hub's side)")
    return {"kills": kills, "runs": runs, "commits": len(commits), "files": len(files), "xet_left": xet_left}


def _download_and_load(repo: str, env: dict, cwd: Path) -> dict:
    script = f"""
        import hashlib, json, pathlib
        from huggingface_hub import snapshot_download
        from transformers import AutoModelForCausalLM, AutoTokenizer
        folder = pathlib.Path(snapshot_download({repo!r}, local_dir="downloaded"))
        model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
        ids = model.generate(**tok("\\n", return_tensors="pt"), max_new_tokens=8, do_sample=False)
        print(json.dumps({{"weights": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
                          "params": model.num_parameters(), "text": tok.decode(ids[0])}}))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=("prepare", "push"), required=True)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lfs", action="store_true", help="push: classic LFS instead of xet")
    p.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    args = p.parse_args(argv)
    text = Path(args.text).read_text(encoding="utf-8")
    start = time.time()
    with tempfile.TemporaryDirectory() as d:
        if args.target == "prepare":
            run_prepare(Path(d), text * 4, args.kills, args.seed)
        else:
            run_push(Path(d), text[:200_000], args.kills, args.seed, lfs=args.lfs)
    print(f"done in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
