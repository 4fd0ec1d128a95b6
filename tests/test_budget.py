"""A time budget as the recipe (hfgpt.training.budget): the plan fills only the keys the user did not
set, is written into recipe.yaml and continued exactly by a resume; a run keeps its budget, also
when the machine becomes slower mid-run (the end moves up, the learning rate has decayed)."""

import os
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hfgpt import train
from hfgpt.config import load_recipe
from hfgpt.config.recipe import parse_duration, planned_keys
from hfgpt.training import rules
from tests.conftest import PYTHON, run_env
from tests.helpers import error_lines, read_metrics


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("2m", 120), ("1h30m", 5400), ("45", 45), ("1.5m", 90),
                                           ("2 m", None), ("m", None), ("", None), ("-5s", None)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_a_budget_that_is_no_duration_is_one_line(tiny_recipe, capsys):
    recipe = tiny_recipe(time_budget="soon")
    assert train.main([str(recipe)]) == 2
    assert error_lines(capsys) == [f"error: {recipe}: time_budget='soon' is not a duration: write e.g. 90s, 2m or 1h30m"]


@pytest.mark.e2e
def test_the_plan_sets_only_what_the_user_did_not(tiny_recipe, workdir, capsys):
    """Keys from the recipe file or the command line stay as given; every other planned key is
    the plan's, and recipe.yaml holds them."""
    recipe = tiny_recipe(time_budget="30s", max_iters=12, eval_interval=6, n_layer=2, learning_rate=2e-3)
    given = set(yaml.safe_load(recipe.read_text())) | {"batch_size"}
    assert train.main([str(recipe), "--batch_size=6"]) == 0
    out = capsys.readouterr().out
    planned = {item.split("=", 1)[0] for item in out.split("plan: ", 1)[1].split("\n", 1)[0].split(", ")}
    saved = yaml.safe_load((workdir / "out" / "recipe.yaml").read_text())
    original = {**yaml.safe_load(recipe.read_text()), "batch_size": 6}
    assert not planned & given and planned <= set(planned_keys()) and {"optimizer", "muon_lr", "lr_schedule"} <= planned
    assert {k: saved[k] for k in given} == {k: original[k] for k in given}
    assert saved["batch_size"] == 6 and saved["max_iters"] == 12 and saved["n_layer"] == 2
    assert [r["iter"] for r in read_metrics(workdir / "out") if "loss" in r][-1] == 12  # the user's max_iters, kept
    assert saved["optimizer"] == "muon" and saved["lr_schedule"] == "wsd" and saved["bias"] is False  # the plan's


@pytest.mark.parametrize("train_tokens, dropout", [(10_000_000, 0.0), (20_000, 0.1)], ids=["one pass", "many passes"])
def test_the_iterations_fit_the_step_with_the_planned_dropout(monkeypatch, train_tokens, dropout):
    """Dropout comes from the passes over the text; a step with dropout is slower (on the CPU 54 ->
    75 ms for the fast recipe's shape), so the chosen shape is timed again with it and the
    iterations fit that step, not the dropout-free one the candidates were measured with."""
    from hfgpt.training import budget

    monkeypatch.setattr(budget, "time_step", lambda m, *args: 0.01 * (1 + 4 * m.dropout) * m.n_layer)
    budget.start_clock(time.time())
    recipe = load_recipe(None, {"time_budget": "100s", "device": "cpu", "block_size": 64})
    budget.plan_budget(recipe, {"vocab_size": 65, "train_tokens": train_tokens, "tokenizer": "char"},
                       torch.device("cpu"), "no", say=lambda text: None)
    step = 0.01 * (1 + 4 * dropout) * recipe.model.n_layer
    assert recipe.model.dropout == dropout == rules.regularization(recipe.train.max_iters * 48 * 64 / train_tokens)["dropout"]
    assert recipe.train.max_iters == pytest.approx(rules.iterations(100, step), rel=0.02)


@pytest.mark.e2e
def test_a_resumed_budget_run_continues_its_plan_bitwise(tiny_recipe, workdir):
    """The same command with init_from=resume takes the plan from the checkpoint (not a new one)
    and ends where the uninterrupted run ends, bit for bit."""
    recipe = str(tiny_recipe(time_budget="60s", max_iters=12, eval_interval=6, always_save_checkpoint=True,
                             keep_last=None, dropout=0.1))
    assert train.main([recipe]) == 0
    plan = yaml.safe_load((workdir / "out" / "recipe.yaml").read_text())
    again = workdir / "again"
    assert train.main([recipe, "--init_from=resume", f"--resume_from={workdir / 'out' / 'checkpoints' / 'iter-000006'}",
                       f"--out_dir={again}"]) == 0
    resumed = yaml.safe_load((again / "recipe.yaml").read_text())
    assert {k: resumed[k] for k in planned_keys() if k != "out_dir"} == {k: plan[k] for k in planned_keys() if k != "out_dir"}
    a, b = load_file(workdir / "out" / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.e2e
def test_a_source_alone_names_the_dataset_and_out_dir(workdir, shakespeare_text):
    from hfgpt.training.budget import name_budget_run

    recipe = load_recipe(None, ["--source=notes/my text.md", "--time_budget=1m"])
    name_budget_run(recipe)
    assert (recipe.data.dataset, recipe.train.out_dir) == ("my-text", "out-my-text")
    recipe = load_recipe(None, ["--source=a.txt", "--time_budget=1m", "--dataset=mine"])
    name_budget_run(recipe)
    assert (recipe.data.dataset, recipe.train.out_dir) == ("mine", "out-mine")


def budget_run(workdir, text: str, budget: int,
               slow_down_after: float | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """python -m hfgpt.train --source=... --time_budget=... on one core, timed from start to exit;
    with slow_down_after, a process spinning on the same core from that many seconds into the run on."""
    (workdir / "text.txt").write_text(text, encoding="utf-8")
    cmd = [PYTHON, "-m", "hfgpt.train", "--source=text.txt", "--tokenizer=char", f"--time_budget={budget}s",
           "--device=cpu", "--mixed_precision=no"]
    core = sorted(os.sched_getaffinity(0))[0]
    env = {**run_env(), "OMP_NUM_THREADS": "1"}
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    spinner = None
    if slow_down_after is not None:
        time.sleep(slow_down_after)
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                   preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    try:
        stdout, stderr = proc.communicate(timeout=10 * budget)
    finally:
        if spinner is not None:
            spinner.kill()
    return time.time() - start, subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.e2e
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins processes to a core (Linux)")
@pytest.mark.parametrize("slow_down_after", [None, 8.0], ids=["steady", "slowed mid-run"])
def test_the_budget_is_kept(workdir, shakespeare_text, slow_down_after):
    """20 s for the whole process, on one core: it ends within 10% of the budget (and uses most of
    it); when another process takes half of that core mid-run, the run ends earlier than planned,
    still within the budget, with the learning rate decayed to min_lr and the model saved."""
    budget = 20
    wall, result = budget_run(workdir, shakespeare_text[:300_000], budget, slow_down_after)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0.7 * budget <= wall <= 1.1 * budget, (wall, result.stdout[-2000:])
    saved = yaml.safe_load((workdir / "out-text" / "recipe.yaml").read_text())
    rows = read_metrics(workdir / "out-text")
    last = [r for r in rows if "loss" in r][-1]
    assert (workdir / "out-text" / "model.safetensors").is_file() and rows[-1].get("val_loss") is not None
    assert last["lr"] <= saved["min_lr"] + 0.25 * (saved["learning_rate"] - saved["min_lr"])  # the decay came before the end
    if slow_down_after is not None:
        assert "runs slower than planned" in result.stdout and last["iter"] < saved["max_iters"], result.stdout[-2000:]
