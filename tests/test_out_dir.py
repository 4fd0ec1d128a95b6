"""out_dir's life: a new run never over another run's results, one run at a time (a lock), a bad
out_dir is one line, and the leftovers of killed writers (only theirs) go at the next start."""

import json
import os
import signal
import subprocess
import time

import pytest

from hfgpt import eval as hfgpt_eval
from hfgpt import train
from hfgpt.core.errors import UserError
from hfgpt.core.files import owner_tag, remove_dead_temp
from hfgpt.core import lock
from hfgpt.core.lock import LOCK, hold_lock
from hfgpt.core.layout import list_checkpoints
from tests.conftest import PYTHON, ROOT, dead_owner, run_env
from tests.helpers import ACCELERATE, read_metrics

SHORT = {"max_iters": 10, "eval_interval": 5, "lr_decay_iters": 10, "log_interval": 5}


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.e2e
def test_a_new_run_never_replaces_another_run_unless_told(tiny_recipe, workdir, capsys):
    recipe, out = tiny_recipe(**SHORT), workdir / "out"
    assert train.main([str(recipe)]) == 0
    (out / "notes.txt").write_text("mine")  # not hfgpt's: survives even an overwrite
    (out / "adapter").mkdir()  # as a LoRA run leaves it beside the merged model
    (out / "adapter" / "adapter_config.json").write_text("{}")
    before = files(out)
    for args in ([], ["--eval_only=True"], [f"--init_from={out}", "--overwrite_out_dir=True"],
                 [f"--init_from={out / 'checkpoints' / 'iter-000010'}", "--overwrite_out_dir=True"]):
        assert train.main([str(recipe), "--seed=7", *args]) == 2, args
        errors = error_lines(capsys)
        assert len(errors) == 1 and "out_dir" in errors[0], args
        assert files(out) == before, args  # stopped before touching anything

    assert train.main([str(recipe), "--seed=7", "--max_iters=5", "--overwrite_out_dir=True"]) == 0
    said = capsys.readouterr().out
    assert "removed the earlier run's" in said and "checkpoints/" in said and "adapter/" in said and "notes.txt" in said
    assert not (out / "adapter").exists()
    assert [state["iter"] for _, state in list_checkpoints(out)] == [5]  # the first run's 5 and 10 are gone
    assert [r["iter"] for r in read_metrics(out) if "loss" in r] == [5]
    assert json.loads((out / "training.json").read_text())["iter"] == 5
    assert (out / "notes.txt").read_text() == "mine"


def test_refusal_offers_resume_and_overwrite(tiny_recipe, workdir, capsys):
    (workdir / "out").mkdir()
    (workdir / "out" / "metrics.jsonl").write_text('{"iter": 1, "loss": 4.2}\n')  # a run killed before its first checkpoint
    assert train.main([str(tiny_recipe(**SHORT))]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and "metrics.jsonl" in errors[0]
    assert "--init_from=resume" in errors[0] and "--overwrite_out_dir=True" in errors[0]
    assert train.main([str(tiny_recipe(**SHORT)), "--init_from=resume", "--overwrite_out_dir=True"]) == 2
    assert "overwrite_out_dir=True with init_from=resume" in error_lines(capsys)[0]


@pytest.mark.e2e
def test_two_processes_of_a_multi_process_run_refuse_together(tiny_recipe, workdir):
    (workdir / "out").mkdir()
    (workdir / "out" / "config.json").write_text('{"model_type": "gpt2"}')
    cmd = [ACCELERATE, "launch", "--config_file", str(ROOT / "accelerate_config.yaml"), "--multi_gpu",
           "--num_processes", "2", "-m", "hfgpt.train", str(tiny_recipe(**SHORT, gradient_accumulation_steps=2))]
    result = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), cwd=workdir, timeout=300)
    assert result.returncode != 0  # and within the timeout: no process waits for the other
    assert "traceback : error: out_dir=" in result.stderr and "holds another run (model)" in result.stderr
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["config.json"]


@pytest.mark.parametrize("out_dir, problem", [("", "out_dir is empty"), ("afile", "afile is a file"),
                                              ("afile/run", "afile is a file")])
def test_out_dir_that_cannot_be_a_folder_is_one_line(tiny_recipe, workdir, capsys, out_dir, problem):
    (workdir / "afile").write_text("not a folder")
    recipe = tiny_recipe(**SHORT)
    before = sorted(p.name for p in workdir.iterdir())
    assert train.main([str(recipe), f"--out_dir={out_dir}"]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and problem in errors[0]
    assert sorted(p.name for p in workdir.iterdir()) == before  # nothing written into the current folder
    assert (workdir / "afile").read_text() == "not a folder"


def test_the_lock_names_its_holder_and_goes_with_it(tmp_path):
    with hold_lock(tmp_path, "wait") as stale:
        assert stale == {}
        record = json.loads((tmp_path / LOCK).read_text())
        assert record["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"in use by another hfgpt process, pid {os.getpid()} on "):
            with hold_lock(tmp_path, "wait"):
                pass
    assert not (tmp_path / LOCK).exists()


@pytest.mark.e2e
def test_the_lock_of_a_killed_run_is_taken_over(tiny_recipe, workdir, capsys, monkeypatch):
    """A lock naming another machine that nobody renews within 2.5 heartbeats (0.4 s here) is dead."""
    monkeypatch.setattr(lock, "HEARTBEAT", 0.4)
    (workdir / "out").mkdir()
    dead_pid = int(dead_owner().rsplit("-", 1)[1])
    (workdir / "out" / LOCK).write_text(json.dumps({"pid": dead_pid, "host": "here", "started": time.time() - 60}))
    assert train.main([str(tiny_recipe(**SHORT))]) == 0
    assert f"took over {workdir / 'out' / LOCK}" in capsys.readouterr().out
    assert not (workdir / "out" / LOCK).exists()  # released at the end


@pytest.mark.e2e
def test_a_second_training_into_a_running_out_dir_stops_and_eval_meanwhile_is_safe(tiny_recipe, workdir, capsys):
    recipe = tiny_recipe(max_iters=100_000, lr_decay_iters=100_000, eval_interval=2, log_interval=1, eval_iters=1)
    proc = subprocess.Popen([PYTHON, "-m", "hfgpt.train", str(recipe)], cwd=workdir, env=run_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out = workdir / "out"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(list_checkpoints(out)) < 2:
            time.sleep(0.1)
        assert proc.poll() is None
        assert train.main([str(recipe), "--init_from=resume"]) == 2
        errors = error_lines(capsys)
        assert len(errors) == 1 and f"pid {proc.pid} on " in errors[0] and "hfgpt.train" in errors[0]
        for _ in range(3):  # python -m hfgpt.eval out while the run saves out every 2 iterations
            assert hfgpt_eval.main([str(out), "--dataset=tiny"]) == 0
            assert json.loads((out / "eval_results.json").read_text())["tokens"] > 0
        assert proc.poll() is None  # it was training all along
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert (out / "README.md").read_text().startswith("---")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp file, the lock released


def test_leftovers_of_killed_writers_go_at_the_next_start(tiny_recipe, workdir, capsys):
    recipe, out = tiny_recipe(**SHORT), workdir / "out"
    assert train.main([str(recipe), "--max_iters=5"]) == 0
    dead, live = dead_owner(), owner_tag()  # this test's own process is a live writer
    leftovers = [out / f".saving-{dead}-ab12", out / "checkpoints" / f".tmp-iter-000010-{dead}-cd34",
                 out / f".tmp-{dead}-ef56-README.md"]
    for path in leftovers[:2]:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"x" * 1_500_000)
    leftovers[2].write_text("half a card")
    kept = [out / f".saving-{live}-gh78", out / ".my-own-notes"]
    kept[0].mkdir()
    kept[1].write_text("a hidden file of the user's")
    assert train.main([str(recipe), "--init_from=resume"]) == 0
    assert "(3.0 MB freed)" in capsys.readouterr().out
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in kept)


@pytest.mark.parametrize("name, removed", [
    (".saving-{dead}-x1", True), (".tmp-iter-000010-{dead}-x2", True), (".tmp-{dead}-x3-README.md", True),
    (".saving-{live}-x4", False),  # a live writer's
    (".saving-otherhost-1-x5", False),  # another host's: its owner cannot be checked from here
    (".saving-x6", False), ("iter-000010", False), (".prepare-{dead}-x7", False),  # no owner; not a prefix asked for
])
def test_remove_dead_temp_removes_only_dead_writers_files(tmp_path, name, removed):
    path = tmp_path / name.format(dead=dead_owner(), live=owner_tag())
    path.mkdir()
    (path / "f").write_bytes(b"12345")
    assert remove_dead_temp(tmp_path, (".saving-", ".tmp-")) == (5 if removed else 0)
    assert path.exists() is not removed
