"""Checkpoints: exact resume, crash safety (incomplete checkpoints, SIGTERM, SIGKILL), NaN stops,
no pickles."""

import json
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from hfgpt import train
from hfgpt.model import gpt
from hfgpt.training import checkpoint
from hfgpt.training.checkpoint import flatten, list_checkpoints, unflatten
from hfgpt.training.signals import StopSignal
from tests import kill_loop
from tests.conftest import PYTHON, run_env


def losses_by_iter(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["loss"]) for r in rows if "loss" in r], [(r["iter"], r["val_loss"]) for r in rows if "val_loss" in r]


def weights(folder):
    return load_file(folder / "model.safetensors")


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


SPLIT = {"dropout": 0.1, "log_interval": 1, "max_iters": 40, "eval_interval": 10, "lr_decay_iters": 40, "keep_last": None}


def test_split_and_resumed_run_is_bitwise_the_straight_run(tiny_recipe, workdir):
    straight = tiny_recipe("straight.yaml", out_dir=str(workdir / "a"), **SPLIT)
    split = tiny_recipe("split.yaml", out_dir=str(workdir / "b"), **SPLIT)
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


def test_checkpoint_folder_is_a_model_folder_without_pickles(tiny_recipe, workdir):
    assert train.main([str(tiny_recipe())]) == 0
    folder, state = list_checkpoints(workdir / "out")[-1]
    assert state["iter"] == 100 and state["val_loss"] == pytest.approx(state["best_val_loss"])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors", "optimizer.json",
                 "rng-0.safetensors", "state.json", "recipe.yaml"):
        assert (folder / name).is_file(), name
    written = [p for p in (workdir / "out").rglob("*") if p.is_file()]
    assert {p.suffix for p in written} <= {".json", ".jsonl", ".safetensors", ".yaml", ".md", ".png"}
    for p in written:
        assert not p.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK")  # pickle/zip


def test_keep_last_keeps_the_newest_and_the_best(tiny_recipe, workdir):
    assert train.main([str(tiny_recipe(eval_interval=10, keep_last=2))]) == 0
    found = list_checkpoints(workdir / "out")
    iters = [s["iter"] for _, s in found]
    assert iters[-2:] == [90, 100]
    best_iter = min(found, key=lambda item: item[1]["val_loss"])[1]["iter"]
    assert set(iters) == {90, 100, best_iter}
    assert checkpoint.best(workdir / "out")[1]["iter"] == best_iter
    assert checkpoint.latest(workdir / "out")[1]["iter"] == 100


def test_resume_skips_incomplete_checkpoints(tiny_recipe, workdir):
    recipe = tiny_recipe(**SPLIT)
    assert train.main([str(recipe), "--max_iters=20"]) == 0
    ckpts = workdir / "out" / "checkpoints"
    (ckpts / ".tmp-iter-000030").mkdir()  # killed while writing
    (ckpts / ".tmp-iter-000030" / "model.safetensors").write_bytes(b"partial")
    (ckpts / "iter-000090").mkdir()  # a folder without state.json is no checkpoint
    (ckpts / "iter-000090" / "model.safetensors").write_bytes(b"junk")
    assert checkpoint.latest(workdir / "out")[1]["iter"] == 20
    assert train.main([str(recipe), "--init_from=resume", "--max_iters=30"]) == 0
    logs, _ = losses_by_iter(workdir / "out")
    assert [i for i, _ in logs] == list(range(1, 31))
    assert not (ckpts / ".tmp-iter-000030").exists()
    assert checkpoint.latest(workdir / "out")[1]["iter"] == 30


def test_resume_with_another_shape_is_refused(tiny_recipe, workdir, capsys):
    recipe = tiny_recipe(**SPLIT)
    assert train.main([str(recipe), "--max_iters=10"]) == 0
    assert train.main([str(recipe), "--init_from=resume", "--n_layer=3"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "n_layer=3 (checkpoint: 2)" in errors[0]
    assert train.main([str(recipe), "--init_from=resume", "--learning_rate=1e-3"]) == 0  # allowed, and said
    assert "learning_rate 0.003 -> 0.001" in capsys.readouterr().out


def test_resume_without_checkpoint(tiny_recipe, capsys):
    assert train.main([str(tiny_recipe()), "--init_from=resume"]) == 2
    assert "has no complete checkpoint" in capsys.readouterr().err


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
    assert checkpoint.latest(workdir / "out")[1]["iter"] == 20
    assert all(torch.isfinite(v).all() for v in weights(workdir / "out").values())


def test_sigterm_checkpoints_exits_143_and_resumes(tiny_recipe, workdir):
    recipe = tiny_recipe(max_iters=100_000, lr_decay_iters=100_000, eval_interval=50_000, log_interval=1,
                         n_embd=64, block_size=64, batch_size=16)
    proc = subprocess.Popen([PYTHON, "-m", "hfgpt.train", str(recipe)], cwd=workdir, env=run_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "out" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count('"loss"') >= 5:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    folder, state = checkpoint.latest(workdir / "out")
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


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, shakespeare_text):
    kill_loop.run(tmp_path, shakespeare_text[:200_000], kills=2, seed=1, max_iters=100, say=lambda message: None)


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
