"""Checkpoints: exact resume, crash safety (incomplete checkpoints, SIGTERM, SIGKILL), NaN stops,
no pickles."""

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from hfgpt import train
from hfgpt.core import files, layout, tensor_tree
from hfgpt.core.layout import list_checkpoints
from hfgpt.core.signals import StopSignal
from hfgpt.core.tensor_tree import flatten, load_tree, unflatten
from hfgpt.model import gpt
from hfgpt.training import checkpoint, loop as training_loop
from hfgpt.training.metrics import read_metrics as hfgpt_read_metrics
from tests.conftest import PYTHON, ROOT, dead_owner, run_env
from tests.helpers import read_metrics


def losses_by_iter(out_dir):
    rows = read_metrics(out_dir)
    return [(r["iter"], r["loss"]) for r in rows if "loss" in r], [(r["iter"], r["val_loss"]) for r in rows if "val_loss" in r]


def weights(folder):
    return load_file(folder / "model.safetensors")


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


SPLIT = {"dropout": 0.1, "log_interval": 1, "max_iters": 40, "eval_interval": 10, "lr_decay_iters": 40, "keep_last": None}


@pytest.mark.e2e
@pytest.mark.parametrize("optimizer", [{}, {"optimizer": "muon", "muon_momentum": 0.9, "lr_schedule": "wsd"}],
                         ids=["adamw", "muon"])
def test_split_and_resumed_run_is_bitwise_the_straight_run(tiny_recipe, workdir, optimizer):
    straight = tiny_recipe("straight.yaml", out_dir=str(workdir / "a"), **SPLIT, **optimizer)
    split = tiny_recipe("split.yaml", out_dir=str(workdir / "b"), **SPLIT, **optimizer)
    assert train.main([str(straight)]) == 0
    assert train.main([str(split), "--max_iters=20"]) == 0
    assert train.main([str(split), "--init_from=resume"]) == 0
    logs_a, evals_a = losses_by_iter(workdir / "a")
    logs_b, evals_b = losses_by_iter(workdir / "b")
    assert [i for i, _ in logs_a] == list(range(1, 41))
    assert logs_b == logs_a and evals_b == evals_a  # every loss, exactly
    final_a, final_b = workdir / "a" / "checkpoints" / "iter-000040", workdir / "b" / "checkpoints" / "iter-000040"
    assert_same_weights(weights(final_a), weights(final_b))
    assert_same_weights(load_file(final_a / "optimizer.safetensors"), load_file(final_b / "optimizer.safetensors"))
    assert_same_weights(weights(workdir / "a"), weights(workdir / "b"))  # out_dir too
    state = json.loads((final_b / "state.json").read_text())
    assert state["iter"] == 40 and state["tokens_seen"] == 40 * 8 * 32 and state["recipe"]["max_iters"] == 40
    groups = load_tree(final_b, "optimizer")["param_groups"]  # Muon's group first, with its momentum
    assert [g.get("momentum") for g in groups] == ([0.9, None, None] if optimizer else [None, None])


@pytest.mark.e2e
def test_checkpoint_folder_is_a_model_folder_without_pickles(tiny_recipe, workdir):
    assert train.main([str(tiny_recipe())]) == 0
    folder, state = list_checkpoints(workdir / "out")[-1]
    assert state["iter"] == 100 and state["val_loss"] == pytest.approx(state["best_val_loss"])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors", "optimizer.json",
                 "rng-0.safetensors", "batches-0.json", "state.json", "recipe.yaml"):
        assert (folder / name).is_file(), name
    written = [p for p in (workdir / "out").rglob("*") if p.is_file()]
    assert {p.suffix for p in written} <= {".json", ".jsonl", ".safetensors", ".yaml", ".md", ".png"}
    for p in written:
        assert p.read_bytes()[:2] not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK")  # pickle/zip


@pytest.mark.e2e
def test_keep_last_keeps_the_newest_and_the_best(tiny_recipe, workdir):
    assert train.main([str(tiny_recipe(eval_interval=10, keep_last=2))]) == 0
    found = list_checkpoints(workdir / "out")
    iters = [s["iter"] for _, s in found]
    assert iters[-2:] == [90, 100]
    best_iter = min(found, key=lambda item: item[1]["val_loss"])[1]["iter"]
    assert set(iters) == {90, 100, best_iter}
    assert layout.best(workdir / "out")[1]["iter"] == best_iter
    assert layout.latest(workdir / "out")[1]["iter"] == 100


@pytest.mark.e2e
def test_resume_skips_incomplete_checkpoints(tiny_recipe, workdir):
    recipe = tiny_recipe(**SPLIT)
    assert train.main([str(recipe), "--max_iters=20"]) == 0
    ckpts = workdir / "out" / "checkpoints"
    partial = ckpts / f".tmp-iter-000030-{dead_owner()}-x1y2"  # its writer was killed while writing
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"partial")
    (ckpts / "iter-000090").mkdir()  # a folder without state.json is no checkpoint
    (ckpts / "iter-000090" / "model.safetensors").write_bytes(b"junk")
    assert layout.latest(workdir / "out")[1]["iter"] == 20
    assert train.main([str(recipe), "--init_from=resume", "--max_iters=30"]) == 0
    logs, _ = losses_by_iter(workdir / "out")
    assert [i for i, _ in logs] == list(range(1, 31))
    assert not partial.exists()
    assert layout.latest(workdir / "out")[1]["iter"] == 30


@pytest.mark.e2e
def test_resume_with_another_shape_is_refused(tiny_recipe, workdir, capsys):
    recipe = tiny_recipe(**SPLIT)
    assert train.main([str(recipe), "--max_iters=10"]) == 0
    assert train.main([str(recipe), "--init_from=resume", "--n_layer=3"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "n_layer=3 (checkpoint: 2)" in errors[0]
    assert train.main([str(recipe), "--init_from=resume", "--optimizer=muon"]) == 2  # its state is AdamW's
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "optimizer=muon (checkpoint: adamw)" in errors[0]
    assert train.main([str(recipe), "--init_from=resume", "--learning_rate=1e-3"]) == 0  # allowed, and said
    assert "learning_rate 0.003 -> 0.001" in capsys.readouterr().out


def test_resume_without_checkpoint(tiny_recipe, capsys):
    assert train.main([str(tiny_recipe()), "--init_from=resume"]) == 2
    assert "has no complete checkpoint" in capsys.readouterr().err


@pytest.mark.e2e
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_recipe, workdir, monkeypatch, capsys):
    calls = {"n": 0}
    real = gpt.lm_loss

    def poisoned(model, x, y):
        loss = real(model, x, y)
        if model.training:
            calls["n"] += 1
            if calls["n"] > 25:  # from the 26th training step on
                return loss * float("nan")
        return loss

    monkeypatch.setattr(gpt, "lm_loss", poisoned)  # what NextTokenLoss, the trained module, calls
    assert train.main([str(tiny_recipe(eval_interval=10, log_interval=5))]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NaN or infinite at iteration 25" in errors[0]
    assert layout.latest(workdir / "out")[1]["iter"] == 20
    assert all(torch.isfinite(v).all() for v in weights(workdir / "out").values())


@pytest.mark.e2e
def test_sigterm_checkpoints_exits_143_and_resumes(tiny_recipe, workdir):
    recipe = tiny_recipe(max_iters=100_000, lr_decay_iters=100_000, eval_interval=50_000, log_interval=1,
                         n_embd=64, block_size=64, batch_size=16)
    proc = subprocess.Popen([PYTHON, "-m", "hfgpt.train", str(recipe)], cwd=workdir, env=run_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len([r for r in read_metrics(workdir / "out", running=True) if "loss" in r]) >= 5:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    folder, state = layout.latest(workdir / "out")
    logs, _ = losses_by_iter(workdir / "out")
    assert state["iter"] == logs[-1][0] >= 5 and state["val_loss"] is None
    stop = state["iter"]
    assert train.main([str(recipe), "--init_from=resume", f"--max_iters={stop + 5}"]) == 0
    logs, _ = losses_by_iter(workdir / "out")
    assert [i for i, _ in logs] == list(range(1, stop + 6))


class GatherCounter:
    """An accelerator of `world` processes whose gather returns each process's signal number."""

    def __init__(self, world: int, signums: list[int]):
        self.num_processes, self.device, self.signums, self.gathers = world, torch.device("cpu"), signums, 0

    def gather(self, tensor):
        self.gathers += 1
        return torch.tensor(self.signums)


def test_stop_signal_is_gathered_every_log_interval_only():
    """With several processes the flags are gathered (a host sync) at multiples of log_interval
    only, the same iterations everywhere: a SIGTERM on process 1 stops every process at iteration 25."""
    accelerator = GatherCounter(2, [0, int(signal.SIGTERM)])
    stop = StopSignal(every=25)
    seen = [stop.received(accelerator, i) for i in range(1, 101)]
    assert accelerator.gathers == 4  # iterations 25, 50, 75, 100 (hfgpt 0.1: all 100)
    assert seen.index(signal.SIGTERM) == 24
    one = GatherCounter(1, [0])
    with StopSignal(every=25) as alone:
        signal.raise_signal(signal.SIGTERM)
        assert alone.received(one, 3) == signal.SIGTERM and one.gathers == 0  # one process: at once, no gather


@pytest.mark.e2e
def test_sigkill_at_random_moments_and_during_saves_then_resume_is_exact(shakespeare):
    """tests/tools/kill_loop.py with 10 kills and a SIGUSR1, every start the identical command line with
    init_from: auto (as a cluster requeues a job), in its own process (it forks the runs it kills)."""
    result = subprocess.run([PYTHON, "-m", "tests.tools.kill_loop", "--kills=10", "--seed=1", "--max_iters=60", "--json",
                             f"--text={shakespeare}"], cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["kills"] == 10 and summary["usr1"] == 1 and summary["identical_command"]
    assert summary["during_save"] >= 3 and summary["iterations"] == 60


@pytest.mark.parametrize("obj", [
    {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}},
     "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99), "params": [0], "fused": None, "name": "x"}]},
    [1, 2.5, "a", None, True, (torch.zeros(1), {"k": torch.arange(3)})],
])
def test_state_flatten_round_trip(obj):
    tensors = {}
    tree = json.loads(json.dumps(flatten(obj, tensors)))
    back = unflatten(tree, tensors)

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return torch.equal(a, b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    assert same(obj, back)


# --- the second run, the broken file (issue 9) ----------------------------------------------------

@pytest.mark.e2e
def test_a_rewound_run_sets_the_newer_checkpoints_aside(tiny_recipe, workdir, capsys):
    recipe, ckpts = tiny_recipe(**SPLIT), workdir / "out" / "checkpoints"
    assert train.main([str(recipe), "--max_iters=20"]) == 0
    assert train.main([str(recipe), "--init_from=resume", f"--resume_from={ckpts / 'iter-000010'}", "--max_iters=15"]) == 0
    assert "set aside the newer checkpoints iter-000020" in capsys.readouterr().out
    assert [s["iter"] for _, s in list_checkpoints(workdir / "out")] == [10, 15]
    abandoned = [p for p in ckpts.iterdir() if p.name.startswith("abandoned-")]
    assert len(abandoned) == 1 and (abandoned[0] / "iter-000020" / "state.json").is_file()  # kept, never "latest"
    assert train.main([str(recipe), "--init_from=resume", "--max_iters=20"]) == 0  # continues 15, the rewound line
    logs, evals = losses_by_iter(workdir / "out")
    assert [i for i, _ in logs] == list(range(1, 21))
    assert layout.latest(workdir / "out")[1]["iter"] == 20


CORRUPT = {
    "truncated model.safetensors": ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:1000])),
    "invalid optimizer.json": ("optimizer.json", lambda p: p.write_text('{"state": ')),
    "state.json without recipe": ("state.json", lambda p: p.write_text(json.dumps(
        {k: v for k, v in json.loads(p.read_text()).items() if k != "recipe"}))),
}


@pytest.mark.e2e
@pytest.mark.parametrize("damage", CORRUPT)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tiny_recipe, workdir, capsys, damage):
    recipe, ckpts = tiny_recipe(**SPLIT), workdir / "out" / "checkpoints"
    assert train.main([str(recipe), "--max_iters=20"]) == 0
    name, corrupt = CORRUPT[damage]
    corrupt(ckpts / "iter-000020" / name)
    assert train.main([str(recipe), "--init_from=resume", f"--resume_from={ckpts / 'iter-000020'}"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "iter-000020" in errors[0] and name in errors[0]
    assert train.main([str(recipe), "--init_from=resume", "--max_iters=30"]) == 0
    assert f"iter-000020 cannot be resumed ({name}" in capsys.readouterr().out
    logs, _ = losses_by_iter(workdir / "out")
    assert [i for i, _ in logs] == list(range(1, 31))  # 11-20 again, from iteration 10
    assert [s["iter"] for _, s in list_checkpoints(workdir / "out")] == [10, 20, 30]
    assert checkpoint.broken(*list_checkpoints(workdir / "out")[1]) is None  # iter-000020 written anew, whole


@pytest.mark.e2e
def test_a_partial_last_metrics_line_is_dropped_on_resume(tiny_recipe, workdir, capsys):
    recipe, metrics = tiny_recipe(**SPLIT), workdir / "out" / "metrics.jsonl"
    assert train.main([str(recipe), "--max_iters=10"]) == 0
    with metrics.open("a") as f:
        f.write('{"iter": 11, "loss": 3.1, "l')  # killed while writing this line
    assert len(hfgpt_read_metrics(metrics)) == len(metrics.read_text().splitlines()) - 1  # readers skip it (the plot)
    assert train.main([str(recipe), "--init_from=resume", "--max_iters=20"]) == 0
    assert "dropped 1 unreadable line" in capsys.readouterr().out
    logs, evals = losses_by_iter(workdir / "out")  # every line parses again
    assert [i for i, _ in logs] == list(range(1, 21)) and [i for i, _ in evals] == [0, 10, 20]


def test_a_signal_during_an_evaluation_keeps_its_losses(tiny_recipe, workdir, monkeypatch):
    real, calls = training_loop.estimate_loss, []

    def evaluate(model, splits, recipe, accelerator):
        losses = real(model, splits, recipe, accelerator)
        calls.append(1)
        if len(calls) == 2:  # SIGTERM arrives during the evaluation at iteration 10
            os.kill(os.getpid(), signal.SIGTERM)
        return losses

    monkeypatch.setattr(training_loop, "estimate_loss", evaluate)
    assert train.main([str(tiny_recipe(**SPLIT))]) == 143
    folder, state = layout.latest(workdir / "out")
    _, evals = losses_by_iter(workdir / "out")
    assert state["iter"] == 10 and state["val_loss"] is not None and evals[-1] == (10, state["val_loss"])
    assert layout.best(workdir / "out")[1]["iter"] == 10


@pytest.mark.e2e
def test_eval_only_with_resume_evaluates_the_checkpoint_and_writes_no_checkpoint(tiny_recipe, workdir, capsys):
    recipe, out = tiny_recipe(**SPLIT), workdir / "out"
    assert train.main([str(recipe), "--max_iters=20"]) == 0
    capsys.readouterr()
    saved = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "metrics.jsonl"
             and p.name != "loss.png"}
    rows = read_metrics(out)
    assert train.main([str(recipe), "--init_from=resume", "--eval_only=True",
                       f"--resume_from={out / 'checkpoints' / 'iter-000010'}"]) == 0
    said = capsys.readouterr().out
    after = read_metrics(out)
    assert after[:-1] == rows  # the run's log is kept whole (rows past iteration 10 too)
    assert after[-1]["iter"] == 10 and after[-1]["train_loss"] > 0 and after[-1]["val_loss"] > 0
    assert f"iter 10: train loss {after[-1]['train_loss']:.4f}, val loss {after[-1]['val_loss']:.4f}" in said
    assert {p: p.stat().st_mtime_ns for p in saved} == saved  # no checkpoint, model or card written
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["iter-000010", "iter-000020"]


def full_disk(path: Path):
    """What a full disk does to a writer: part of the file, then the error."""
    path.write_bytes(b"\0" * 1000)
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.e2e
@pytest.mark.parametrize("save", ["checkpoint", "model"])
def test_a_full_disk_stops_with_one_line_and_keeps_the_earlier_checkpoints(tiny_recipe, workdir, monkeypatch,
                                                                          capsys, save):
    recipe, out = tiny_recipe(**{**SPLIT, "max_iters": 20}), workdir / "out"
    if save == "checkpoint":  # the optimizer of the second checkpoint, as safetensors reports it
        real = tensor_tree.save_file

        def writer(tensors, path, *args, **kwargs):
            if path.parent.name.startswith(".tmp-iter-000020") and path.name == "optimizer.safetensors":
                path.write_bytes(b"\0" * 1000)
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            return real(tensors, path, *args, **kwargs)

        monkeypatch.setattr(tensor_tree, "save_file", writer)
    else:  # the model folder saved at the second evaluation: the checkpoint's files, copied where links fail
        real, saves = checkpoint.link_or_copy, set()

        def writer(src, dst):
            if dst.parent.name.startswith(".saving-"):
                saves.add(dst.parent.name)
                if len(saves) == 2:
                    full_disk(dst)
            return real(src, dst)

        monkeypatch.setattr(checkpoint, "link_or_copy", writer)
    assert train.main([str(recipe)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    where = out / "checkpoints" if save == "checkpoint" else out
    assert len(errors) == 1 and f"no space left on the device of {where} (this save needs about " in errors[0]
    assert not [p for p in [*out.iterdir(), *(out / "checkpoints").iterdir()] if p.name.startswith(".")]
    folder, state = layout.latest(out)
    assert state["iter"] == 10 and checkpoint.broken(folder, state) is None
    monkeypatch.undo()  # space freed: the run continues from iteration 10
    assert train.main([str(recipe), "--init_from=resume"]) == 0
    assert layout.latest(out)[1]["iter"] == 20


def can_mount_tmpfs() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True).returncode == 0


@pytest.mark.e2e
@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs user namespaces to mount a small tmpfs; the simulated "
                                                   "full disk above tests the same path everywhere")
def test_a_really_full_disk(tiny_recipe, workdir):
    """out_dir on a 1 MB tmpfs (in a private mount namespace): the run stops at the save that does not
    fit, with one line; what is left there is whole."""
    recipe = tiny_recipe(max_iters=1000, eval_interval=5, lr_decay_iters=1000, keep_last=None)
    (workdir / "small").mkdir()
    look = ("import json, pathlib, sys; from hfgpt.core.layout import list_checkpoints; "
            "from hfgpt.training.checkpoint import broken; "
            "out = pathlib.Path('small/out'); print(json.dumps({'hidden': [str(p) for p in out.rglob('.*')], "
            "'checkpoints': [(s['iter'], broken(f, s)) for f, s in list_checkpoints(out)]}))")
    script = (f"mount -t tmpfs -o size=1m tmpfs small && {PYTHON} -m hfgpt.train {recipe} --out_dir=small/out; "
              f"echo code=$?; {PYTHON} -c \"{look}\"")
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=workdir,
                            env=run_env(), capture_output=True, text=True, timeout=300)
    lines = result.stdout.strip().splitlines()
    assert "code=2" in lines, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device of small/out" in errors[0]
    left = json.loads(lines[-1])
    assert left["hidden"] == [] and left["checkpoints"] and all(why is None for _, why in left["checkpoints"])


@pytest.mark.e2e
def test_a_checkpoint_and_a_model_are_on_disk_before_they_are_published(tiny_recipe, workdir, monkeypatch):
    events, real_fsync, real_replace, real_exchange = [], os.fsync, os.replace, files._exchange

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(how):
        def call(a, b):
            events.append(("rename", str(a), str(b)))
            return how(a, b)
        return call

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", rename(real_replace))
    monkeypatch.setattr(files, "_exchange", rename(real_exchange))
    assert train.main([str(tiny_recipe(max_iters=5, eval_interval=5, warmup_iters=1, lr_decay_iters=5))]) == 0
    monkeypatch.undo()

    out = workdir / "out"
    final = out / "checkpoints" / "iter-000005"
    publish = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(final))
    tmp = events[publish][1]
    assert Path(tmp).name.startswith(f".tmp-iter-000005-{files.owner_tag()}-")  # named after its writer
    synced = {e[1] for e in events[:publish] if e[0] == "fsync"}
    written = {f"{tmp}/{p.name}" for p in final.iterdir() if p.name not in ("README.md", "training.json")}
    assert written | {tmp, str(out / "metrics.jsonl")} <= synced  # (the card comes after, atomically)
    assert ("fsync", str(out / "checkpoints")) in events[publish:]  # the rename itself
    moved = [(i, e[1]) for i, e in enumerate(events) if e[0] == "rename" and Path(e[2]).parent == out
             and Path(e[1]).parent.name.startswith(".saving-")]
    assert {Path(src).name for _, src in moved} >= {"config.json", "model.safetensors", "tokenizer.json"}
    for i, src in moved:  # every model file was flushed before it was moved into out_dir
        assert ("fsync", src) in events[:i]


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_dir_never_loses_both_copies(tmp_path, monkeypatch, exchange):
    final, new = tmp_path / "iter-000010", tmp_path / ".tmp-iter-000010-new"
    for folder, text in ((final, "old"), (new, "new")):
        folder.mkdir()
        (folder / "state.json").write_text(text)
    if exchange:  # Linux: swapped in one step; after every step `final` is whole
        seen, real_exchange, real_rmtree = [], files._exchange, shutil.rmtree

        def look(how):
            def call(*args, **kwargs):
                result = how(*args, **kwargs)
                seen.append((final / "state.json").read_text())
                return result
            return call

        monkeypatch.setattr(files, "_exchange", look(real_exchange))
        monkeypatch.setattr(shutil, "rmtree", look(real_rmtree))
        files.replace_dir(new, final)
        assert seen and set(seen) == {"new"} and not new.exists()
        return
    # elsewhere the old copy is renamed aside first: a kill right then leaves it aside, and the next
    # start puts it back
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    dead = dead_owner()
    monkeypatch.setattr(files, "owner_tag", lambda: dead)  # as if this writer had died
    real_replace = os.replace

    def killed_after_one_rename(a, b):
        real_replace(a, b)
        raise SystemExit("killed")

    monkeypatch.setattr(os, "replace", killed_after_one_rename)
    with pytest.raises(SystemExit):
        files.replace_dir(new, final)
    monkeypatch.undo()
    assert not final.exists()
    files.remove_dead_temp(tmp_path, (".old-", ".tmp-"))
    assert (final / "state.json").read_text() == "old"


@pytest.mark.e2e
def test_out_dir_and_the_checkpoint_are_one_serialization(tiny_recipe, workdir, monkeypatch):
    """When val improves, out_dir's model files are the checkpoint's: written once, then hard-linked,
    never serialized from the model a second time."""
    from transformers import PreTrainedModel

    real_save, saved_into = PreTrainedModel.save_pretrained, []

    def counted(self, folder, *args, **kwargs):
        saved_into.append(Path(folder).name)
        return real_save(self, folder, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", counted)
    assert train.main([str(tiny_recipe(max_iters=20, eval_interval=10, lr_decay_iters=20))]) == 0
    out = workdir / "out"
    assert [name.split("-")[1] for name in saved_into] == ["iter", "iter"]  # .tmp-iter-0000NN-...: the checkpoints only
    final = out / "checkpoints" / "iter-000020"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "recipe.yaml"):
        assert (out / name).samefile(final / name)


@pytest.mark.parametrize("error", [errno.EXDEV, errno.EPERM, errno.ENOSPC])
def test_link_or_copy_copies_where_links_fail(tmp_path, monkeypatch, error):
    """Another file system (EXDEV) or one without hard links (EPERM): a copy; a full disk is not hidden."""
    (tmp_path / "a" / "adapter").mkdir(parents=True)
    (tmp_path / "a" / "adapter" / "w.safetensors").write_bytes(b"weights")

    def no_link(src, dst):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "link", no_link)
    if error == errno.ENOSPC:
        with pytest.raises(OSError):
            files.link_or_copy(tmp_path / "a", tmp_path / "b")
        return
    files.link_or_copy(tmp_path / "a", tmp_path / "b")
    copy = tmp_path / "b" / "adapter" / "w.safetensors"
    assert copy.read_bytes() == b"weights" and not copy.samefile(tmp_path / "a" / "adapter" / "w.safetensors")
