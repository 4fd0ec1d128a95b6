"""Who is writing a folder, told right: a dead writer whose PID runs again (PID 1 of a restarted
container) is dead, every wait for a live one ends, and no reader or second writer ever meets a
folder halfway through another's change (two prepares, a train reading while a prepare publishes,
a model save killed between its renames, a lock on storage whose flock is per machine)."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from hfgpt import prepare, train
from hfgpt.core import lock
from hfgpt.core.errors import UserError
from hfgpt.core.files import temp_dir
from hfgpt.core.lock import LOCK, hold_lock
from hfgpt.data import prepare as data_prepare
from hfgpt.data.meta import read_meta, shard_problem
from hfgpt.data.shards import PREPARING
from tests.conftest import PYTHON, run_env
from tests.helpers import reused_pid

SHORT = {"max_iters": 10, "eval_interval": 5, "lr_decay_iters": 10, "log_interval": 5, "eval_iters": 2}


@pytest.mark.e2e
def test_a_dead_writers_leftover_whose_pid_runs_again_is_removed_not_waited_for(tiny_recipe, workdir, capsys):
    """A prepare killed while it had a PID that another process has now (PID 1 after `docker
    restart`): its work folder is removed and the prepare goes on, where it used to wait forever;
    the same for a checkpoint a killed run was writing."""
    recipe = str(tiny_recipe(**SHORT))
    data = workdir / "data" / "tiny"
    data.mkdir(parents=True)

    def leftover(owner):
        work = data / f"{PREPARING}{owner}-ab12"
        work.mkdir()
        (work / "train-00000.bin").write_bytes(bytes(1000))  # what it wrote before it was killed
        return work

    proc, work = reused_pid(leftover)
    try:
        assert prepare.main([recipe]) == 0  # on main: "waiting for the prepare that is writing" until the timeout
        said = capsys.readouterr().out
        assert not work.exists() and "removed 1,000 bytes that a stopped prepare left" in said
        assert "waiting for the prepare" not in said

        assert train.main([recipe]) == 0
        ckpts = workdir / "out" / "checkpoints"
        proc2, partial = reused_pid(lambda owner: (ckpts / f".tmp-iter-000015-{owner}-cd34").mkdir() or
                                    ckpts / f".tmp-iter-000015-{owner}-cd34")
        try:
            assert train.main([recipe, "--init_from=resume", "--max_iters=12"]) == 0
            assert not partial.exists()
        finally:
            proc2.kill()
            proc2.wait()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.e2e
@pytest.mark.parametrize("held_by", ["a live work folder", "the dataset's lock"])
def test_every_wait_for_another_prepare_ends_with_one_line_saying_how_to_clear_it(tiny_recipe, workdir, monkeypatch,
                                                                                  capsys, held_by):
    """A live prepare that never finishes (hung, or stopped with SIGSTOP) is waited for at most
    HFGPT_WAIT_LIMIT seconds (2 here); then one line names its work folder and what to do."""
    recipe = str(tiny_recipe(**SHORT))
    assert prepare.main([recipe]) == 0
    monkeypatch.setattr(lock, "WAIT_LIMIT", 2.0, raising=False)  # (main has none: it waits forever)
    monkeypatch.setattr(data_prepare, "WAIT_LIMIT", 2.0, raising=False)
    data = workdir / "data" / "tiny"
    with temp_dir(data, PREPARING) as work:  # this process is that prepare: alive, never finishing
        (data / "meta.json").unlink()  # as publish leaves it midway
        if held_by == "the dataset's lock":  # held through another open file, as another process holds it
            holding = data_prepare.dataset_lock(data)
            holding.__enter__()
        try:
            started = time.time()
            capsys.readouterr()
            code = train.main([recipe, "--source=None"])  # on main: waits forever (until the test's timeout)
        finally:
            if held_by == "the dataset's lock":
                holding.__exit__(None, None, None)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and time.time() - started < 60 and len(errors) == 1
    assert "waited" in errors[0] and work.name in errors[0] and "HFGPT_WAIT_LIMIT" in errors[0]


@pytest.mark.e2e
def test_two_prepares_of_one_dataset_take_turns(tiny_recipe, workdir, monkeypatch):
    """Two prepares that both look before either has made its work folder: on main both found the
    folder free (wait_for_prepare saw no live work folder), tokenized side by side and published over
    each other. Now the second waits for the first, whatever moment it comes in."""
    recipe = tiny_recipe(**SHORT)
    data = workdir / "data" / "tiny"
    looked, go = threading.Event(), threading.Event()
    real = data_prepare.wait_for_prepare

    def wait_for_prepare(out, *args, **kwargs):
        meta = real(out, *args, **kwargs)
        if not looked.is_set():  # the first prepare: it has looked, its work folder is not made yet
            looked.set()
            go.wait(30)
        return meta

    monkeypatch.setattr(data_prepare, "wait_for_prepare", wait_for_prepare)
    results = {}
    first = threading.Thread(target=lambda: results.update(first=prepare.main([str(recipe)])))
    second = threading.Thread(target=lambda: results.update(second=prepare.main([str(recipe), "--shard_size=20000"])))
    first.start()
    assert looked.wait(60)
    second.start()
    time.sleep(3)
    meanwhile = {"second done": "second" in results, "work folders": sorted(p.name for p in data.glob(f"{PREPARING}*"))}
    go.set()
    first.join(60)
    second.join(60)
    assert results == {"first": 0, "second": 0}
    assert meanwhile == {"second done": False, "work folders": []}, f"the second prepare wrote {data} meanwhile"
    meta = read_meta(data)
    assert meta["shard_size"] == 20_000 and shard_problem(data, meta) is None  # the second's, after the first's
    assert sorted(p.name for p in data.glob("*.bin")) == sorted(e["file"] for s in meta["shards"].values() for e in s)


@pytest.mark.e2e
def test_a_train_reads_one_preparation_whole_while_another_prepare_waits(tiny_recipe, workdir, monkeypatch):
    """setup() reads meta.json, then the tokenizer, then the token files: a prepare of other settings
    that comes in between must wait until it has read them (on main it published in between, and
    the train read token files meta.json did not list)."""
    from hfgpt.training import run

    recipe = tiny_recipe(**SHORT)
    assert prepare.main([str(recipe)]) == 0
    real, other = run.load_tokenizer, {}

    def load_tokenizer(name):
        if not other:  # between meta.json and the tokenizer: another prepare starts, with other shards
            other["thread"] = threading.Thread(
                target=lambda: other.update(code=prepare.main([str(recipe), "--shard_size=20000"])))
            other["thread"].start()
            time.sleep(4)
            other["published while read"] = read_meta(workdir / "data" / "tiny")["shard_size"] == 20_000
        return real(name)

    monkeypatch.setattr(run, "load_tokenizer", load_tokenizer)
    assert train.main([str(recipe), "--source=None"]) == 0
    other["thread"].join(120)
    assert other["code"] == 0 and not other["published while read"]
    assert read_meta(workdir / "data" / "tiny")["shard_size"] == 20_000  # it published once the train had read


KILL_BETWEEN_RENAMES = """
import os, signal, sys
from hfgpt import train
real, moved = os.replace, []
def replace(a, b):
    real(a, b)
    if ".saving-" in str(a) and os.path.basename(str(b)) == "model.safetensors":
        moved.append(b)
        if len(moved) == 2:  # the second save: its weights are in out_dir, the rest not yet
            os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.e2e
def test_a_model_save_killed_between_its_renames_is_finished_by_the_next_start(tiny_recipe, workdir):
    """out_dir's model files are moved into place one by one: a kill between two renames left the
    new weights under the old card (training.json, README.md said iteration 5 of weights of 10). The
    next start finishes that save: out_dir describes the weights it holds."""
    recipe = str(tiny_recipe(**SHORT))
    out = workdir / "out"
    killed = subprocess.run([PYTHON, "-c", KILL_BETWEEN_RENAMES, recipe], cwd=workdir, env=run_env(),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    weights = (out / "model.safetensors").read_bytes()  # the second save's: iteration 10
    assert train.main([recipe, "--init_from=resume", "--eval_only=True"]) == 0  # writes no model of its own
    assert (out / "model.safetensors").read_bytes() == weights
    assert json.loads((out / "training.json").read_text())["iter"] == 10
    assert "for 10 iterations" in (out / "README.md").read_text()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".saving-")]


@pytest.mark.parametrize("renewed", [True, False], ids=["holder renews it", "holder dead"])
def test_a_lock_of_another_machine_is_told_live_or_dead_by_its_renewal(tmp_path, monkeypatch, renewed):
    """On storage whose flock works per machine (some NFS and Lustre mounts), a run on another
    machine holds out_dir/.lock without this machine seeing its flock. Its record names that
    machine; a holder that renews the lock's time is refused, one that does not (dead) is taken
    over after a bounded wait (on main: taken over at once, two runs in one out_dir)."""
    monkeypatch.setattr(lock, "HEARTBEAT", 0.4, raising=False)
    record = {"pid": 4242, "host": "another-node", "started": time.time() - 60, "command": "hfgpt train r.yaml"}
    (tmp_path / LOCK).write_text(json.dumps(record))
    stop = threading.Event()

    def renew():
        while renewed and not stop.wait(0.1):
            os.utime(tmp_path / LOCK)

    threading.Thread(target=renew, daemon=True).start()
    try:
        if renewed:
            with pytest.raises(UserError, match="pid 4242 on another-node .* which renews"):
                with hold_lock(tmp_path, "wait"):
                    pass
            assert json.loads((tmp_path / LOCK).read_text()) == record  # left as it was
        else:
            started = time.monotonic()
            with hold_lock(tmp_path, "wait") as stale:
                assert stale == record and json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
            assert time.monotonic() - started < 5
    finally:
        stop.set()


def test_the_lock_is_renewed_while_held(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT", 0.2, raising=False)
    with hold_lock(tmp_path, "wait"):
        first = (tmp_path / LOCK).stat().st_mtime_ns
        time.sleep(1.0)
        assert (tmp_path / LOCK).stat().st_mtime_ns > first
