"""One command line that is a run's first start and every restart (a requeued cluster job):
init_from: auto, SIGUSR1 before the time limit, scripts/slurm.sbatch; and what a resumed run says
of itself (recipe.yaml names what it started from, notes on a resume that trains nothing or only
at min_lr). tests/tools/kill_loop.py (test_checkpoint.py) kills such a run ten times and signals it once."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from hfgpt import train
from tests.conftest import ROOT, free_port, run_env
from tests.helpers import error_lines, read_metrics

SHORT = {"max_iters": 10, "eval_interval": 5, "eval_iters": 2, "log_interval": 5, "warmup_iters": 1, "lr_decay_iters": 10}


def test_init_from_auto_starts_then_resumes_and_says_which(tiny_recipe, workdir, capsys):
    recipe = str(tiny_recipe(**SHORT, init_from="auto"))
    assert train.main([recipe, "--max_iters=5"]) == 0
    assert "init_from=auto: no checkpoint in out/checkpoints yet: starting from scratch" in \
        capsys.readouterr().out.replace(str(workdir) + "/", "")
    assert train.main([recipe]) == 0  # the same command: now it resumes
    said = capsys.readouterr().out
    assert "init_from=auto:" in said and "resuming the newest" in said and "resuming " in said
    assert [r["iter"] for r in read_metrics(workdir / "out") if "loss" in r] == [5, 10]
    assert yaml.safe_load((workdir / "out" / "recipe.yaml").read_text())["init_from"] == "scratch"


@pytest.mark.e2e
def test_init_from_auto_model_fine_tunes_from_it(tiny_recipe, workdir, gpt2_medium_dir, capsys):
    recipe = str(tiny_recipe(**SHORT, init_from=f"auto:{gpt2_medium_dir}", tokenizer=None))
    assert train.main([recipe, "--max_iters=5", "--eval_interval=5"]) == 0
    assert f"starting from {gpt2_medium_dir}" in capsys.readouterr().out
    assert yaml.safe_load((workdir / "out" / "recipe.yaml").read_text())["init_from"] == str(gpt2_medium_dir)
    assert train.main([recipe, "--max_iters=7", "--eval_interval=7"]) == 0  # the same command resumes it
    assert "resuming" in capsys.readouterr().out.lower()
    for saved in (workdir / "out" / "recipe.yaml", workdir / "out" / "checkpoints" / "iter-000007" / "recipe.yaml"):
        assert yaml.safe_load(saved.read_text())["init_from"] == str(gpt2_medium_dir), saved  # the base, not resume
    assert f"init_from: {gpt2_medium_dir}" in (workdir / "out" / "README.md").read_text()


@pytest.mark.e2e
def test_init_from_auto_replaces_only_its_own_leftovers(tiny_recipe, workdir, capsys):
    """Without a checkpoint, out_dir may hold what an attempt of this run left (its metrics, a model
    saved under this recipe): replaced. Another run's model is refused as for any new run."""
    out = workdir / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"iter": 1, "loss": 4.2}\n')  # killed before its first save
    recipe = str(tiny_recipe(**SHORT, init_from="auto"))
    assert train.main([recipe, "--max_iters=5"]) == 0
    assert "replacing metrics.jsonl, left by an earlier attempt of this run" in capsys.readouterr().out
    other = str(tiny_recipe(name="other.yaml", **SHORT))
    assert train.main([other, "--out_dir=elsewhere", "--max_iters=5"]) == 0
    shutil.rmtree(workdir / "elsewhere" / "checkpoints")  # its model only: a finished run whose checkpoints went
    capsys.readouterr()
    assert train.main([recipe, "--out_dir=elsewhere", "--n_embd=64"]) == 2  # a model of another recipe
    errors = error_lines(capsys)
    assert len(errors) == 1 and "holds another run (model" in errors[0]


@pytest.mark.e2e
def test_a_resumed_run_records_what_it_started_from_and_notes_a_resume_that_trains_nothing(tiny_recipe, workdir,
                                                                                         capsys):
    """recipe.yaml and the card said init_from: resume after a resume (rerun elsewhere it fails, and a
    fine-tune's base was lost); resume_from stayed set too."""
    recipe = str(tiny_recipe(**SHORT))
    out = workdir / "out"
    assert train.main([recipe, "--max_iters=5"]) == 0
    assert train.main([recipe, "--init_from=resume", f"--resume_from={out / 'checkpoints' / 'iter-000005'}"]) == 0
    for saved in (out / "recipe.yaml", out / "checkpoints" / "iter-000010" / "recipe.yaml"):
        values = yaml.safe_load(saved.read_text())
        assert values["init_from"] == "scratch" and values["resume_from"] is None, saved
    assert "init_from: scratch" in (out / "README.md").read_text()
    assert json.loads((out / "checkpoints" / "iter-000010" / "state.json").read_text())["recipe"]["init_from"] == "scratch"
    assert train.main([str(out / "recipe.yaml"), f"--out_dir={workdir / 'again'}"]) == 0  # trains it again
    capsys.readouterr()
    assert train.main([recipe, "--init_from=resume"]) == 0
    assert "iteration 10 already reaches max_iters=10: 0 iterations to train" in capsys.readouterr().out
    assert train.main([recipe, "--init_from=resume", "--max_iters=12"]) == 0
    assert "iterations 11-12 all run at min_lr" in capsys.readouterr().out


def shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)


@pytest.mark.e2e
def test_the_slurm_script_checkpoints_on_sigusr1_and_requeues_the_job(tiny_recipe, workdir):
    """scripts/slurm.sbatch run as SLURM would (srun, scontrol and scancel stand-ins, one node, a CPU
    process under accelerate launch): SIGUSR1 to the batch script before the time limit reaches
    the training process (the launcher, accelerate launch, ignores it), which checkpoints and stops;
    the script requeues the job, whose next start (the same command: --init_from=auto) resumes it
    (tests/tools/kill_loop.py reruns such a command after every stop)."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    shim(bin_dir, "srun", """\
        import os, sys
        args = sys.argv[1:]
        while args[0].startswith("-"):
            args.pop(0)
        open(os.path.join(os.environ["SHIM_DIR"], "step.pid"), "w").write(str(os.getpid()))
        os.environ["SLURM_NODEID"] = "0"
        os.execvp(args[0], args)
    """)
    shim(bin_dir, "scancel", """\
        import os, signal, sys, psutil
        sig = getattr(signal, "SIG" + sys.argv[1].split("=")[1])
        step = psutil.Process(int(open(os.path.join(os.environ["SHIM_DIR"], "step.pid")).read()))
        for p in [step, *step.children(recursive=True)]:  # every process of the step, as proctrack/cgroup
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
    """)
    shim(bin_dir, "scontrol", """\
        import os, sys
        if sys.argv[1:3] == ["show", "hostnames"]:
            print("127.0.0.1")
        elif sys.argv[1] == "requeue":
            open(os.path.join(os.environ["SHIM_DIR"], "requeued"), "a").write(sys.argv[2] + "\\n")
    """)
    recipe = str(tiny_recipe(**{**SHORT, "max_iters": 100_000, "lr_decay_iters": 100_000, "eval_interval": 100_000,
                                "log_interval": 1}))
    env = {**run_env(), "SHIM_DIR": str(workdir), "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}"
           f"{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node1",
           "SLURM_NNODES": "1", "GPUS_PER_NODE": "1", "MASTER_PORT": str(free_port())}
    script = ["bash", str(ROOT / "scripts" / "slurm.sbatch"), recipe]
    job = subprocess.Popen(script, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while job.poll() is None and time.time() < deadline and len(read_metrics(workdir / "out", running=True)) < 3:
        time.sleep(0.1)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 does
    log = job.communicate(timeout=300)[0]
    assert (workdir / "requeued").read_text() == "4242\n", log[-3000:]
    stopped = max(r["iter"] for r in read_metrics(workdir / "out") if "loss" in r)
    assert (workdir / "out" / "checkpoints" / f"iter-{stopped:06d}" / "state.json").is_file(), log[-3000:]
    assert "SIGUSR1: saved" in log and "scontrol requeue 4242" in log  # the requeued start: init_from=auto resumes


@pytest.mark.e2e
def test_sigusr1_checkpoints_and_exits_138_with_a_requeue_hint(tiny_recipe, workdir, monkeypatch, capsys):
    """In one process (no launcher): SIGUSR1 is a stop request with its own exit code."""
    from hfgpt.training import run

    recipe = str(tiny_recipe(**{**SHORT, "max_iters": 12, "lr_decay_iters": 12, "log_interval": 1}))
    real, steps = run.train_step, []

    def step(*args, **kwargs):
        steps.append(1)
        if len(steps) == 7:
            signal.raise_signal(signal.SIGUSR1)
        return real(*args, **kwargs)

    monkeypatch.setattr("hfgpt.training.loop.train_step", step)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)  # a run that ignores it must not end pytest
    try:
        code = train.main([recipe])
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert code == 128 + signal.SIGUSR1
    said = capsys.readouterr().out
    assert "SIGUSR1: saved" in said and "iter-000007" in said and "scontrol requeue 77" in said
    assert train.main([recipe, "--init_from=auto"]) == 0
