"""Several processes under `accelerate launch`: two on one machine, and two simulated machines on
this one (`--num_machines 2 --machine_rank 0|1 --main_process_ip 127.0.0.1`, started together, one
process each, a gloo group) that share no file system: each works in its own folder.

accelerate's --cpu launcher starts one process without MPI; --multi_gpu is its torchrun launcher, and
the recipe's device: cpu makes the processes a gloo group (MULTI_CPU).
"""

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from hfgpt import train
from tests.conftest import ROOT, free_port, run_env
from tests.helpers import ACCELERATE, read_metrics

pytestmark = pytest.mark.e2e

LAUNCH = [ACCELERATE, "launch", "--config_file", str(ROOT / "accelerate_config.yaml"), "--multi_gpu", "--num_processes", "2"]


def state(folder) -> dict:
    return json.loads((folder / "state.json").read_text())


def same_tensors(a, b) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def evaluations(out_dir) -> list[tuple]:
    return [(r["iter"], r["train_loss"], r["val_loss"]) for r in read_metrics(out_dir) if "val_loss" in r]


def launch(args: list[str], folder, machine_rank: int | None = None, port: int = 0) -> subprocess.Popen:
    """accelerate launch of 2 processes of hfgpt.train on one machine, or of this one of two machines."""
    machines = ["--num_machines", "2", "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1"]
    return subprocess.Popen(LAUNCH + (machines if machine_rank is not None else []) + ["--main_process_port", str(port),
                            "-m", "hfgpt.train", *args], cwd=folder, env=run_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait(*procs: subprocess.Popen) -> None:
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)


def test_two_processes_and_two_machines_without_shared_storage(tiny_recipe, workdir):
    """2 processes x 1 micro-batch are 1 process x 2 micro-batches' global batch (same tokens per
    iteration, similar losses, one writer). Two machines that share no file system train the same
    run as the 2 processes on one machine, bit for bit, through a checkpoint and a resume: data,
    checkpoints and the resume are each machine's own, with each rank's RNG on its machine."""
    recipe = tiny_recipe(gradient_accumulation_steps=2, max_iters=40, eval_interval=20, lr_decay_iters=40, eval_iters=2,
                         out_dir="out")  # relative, as data_dir: under each machine's folder
    machines = [workdir / "machine0", workdir / "machine1"]
    for folder in machines:
        folder.mkdir()
    port = free_port()
    # at once: 2 processes on one machine, 40 iterations; and 2 machines, 20 iterations (then resumed)
    wait(launch([str(recipe), f"--out_dir={workdir / 'two'}"], workdir, port=free_port()),
         *(launch([str(recipe), "--max_iters=20"], folder, rank, port) for rank, folder in enumerate(machines)))
    assert train.main([str(recipe), f"--out_dir={workdir / 'one'}"]) == 0

    two, one = read_metrics(workdir / "two"), read_metrics(workdir / "one")
    assert [r["iter"] for r in two if "val_loss" in r] == [0, 20, 40]  # one writer: no duplicated lines
    assert abs(two[-1]["val_loss"] - one[-1]["val_loss"]) < 0.1
    final = workdir / "two" / "checkpoints" / "iter-000040"
    assert state(final)["tokens_seen"] == state(workdir / "one" / "checkpoints" / "iter-000040")["tokens_seen"] == 40 * 2 * 8 * 32
    assert state(final)["world_size"] == 2 and state(final)["storage"] == "shared"
    assert sorted(p.name for p in final.glob("rng-*")) == ["rng-0.safetensors", "rng-1.safetensors"]

    port = free_port()
    wait(*(launch([str(recipe), "--init_from=resume"], folder, rank, port) for rank, folder in enumerate(machines)))
    assert evaluations(machines[0] / "out") == evaluations(workdir / "two")  # exactly
    assert not (machines[1] / "out" / "metrics.jsonl").exists()  # logs and out_dir's model: the main process's
    for rank, folder in enumerate(machines):
        assert (folder / "data" / "tiny" / "meta.json").exists()  # each machine prepared its own copy
        mine = folder / "out" / "checkpoints" / "iter-000040"
        assert sorted(p.name for p in mine.glob("rng-*")) == [f"rng-{rank}.safetensors"]
        assert state(mine)["storage"] == "per-machine" and state(mine)["iter"] == 40
        for name in ("model.safetensors", "optimizer.safetensors", f"rng-{rank}.safetensors"):
            assert same_tensors(mine / name, final / name), name  # the one-machine run's, bit for bit
    assert same_tensors(machines[0] / "out" / "model.safetensors", workdir / "two" / "model.safetensors")
