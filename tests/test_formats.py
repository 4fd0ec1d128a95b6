"""Numbered formats: state.json and meta.json say theirs, older files are read through
hfgpt.core.formats' upgrade steps, newer ones are refused in one line."""

import base64
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hfgpt import train
from hfgpt.core.formats import META_FORMAT, STATE_FORMAT, upgrade_state
from hfgpt.data.meta import meta_problem, read_meta
from tests.helpers import error_lines


@pytest.mark.e2e
def test_what_hfgpt_writes_carries_its_format(tiny_recipe, workdir):
    assert train.main([str(tiny_recipe(max_iters=2, eval_interval=2))]) == 0
    state = json.loads((workdir / "out" / "checkpoints" / "iter-000002" / "state.json").read_text())
    assert state["format"] == STATE_FORMAT == 2
    assert read_meta(workdir / "data" / "tiny")["format"] == META_FORMAT == 1


def test_a_format_0_state_gets_its_evaluation_iteration():
    """hfgpt 0.1 wrote no eval_iter: a checkpoint's losses were those of its own iteration."""
    old = {"iter": 40, "train_loss": 2.0, "val_loss": 2.1, "recipe": {}}
    assert upgrade_state(old) == {**old, "eval_iter": 40, "format": 2}
    assert "format" not in old  # the record read is left as it was
    assert upgrade_state({"iter": 40, "val_loss": None}).get("eval_iter") is None


def as_older_format(folder, old_format: int) -> None:
    """Turn today's checkpoint into one of format 1 (the batches' generator a tensor "batches" in
    rng-0.safetensors, no batches-0.json) or 0 (hfgpt 0.1: that tensor named "sampler", no format, no
    eval_iter in state.json)."""
    state = json.loads((folder / "state.json").read_text())
    state["format"] = old_format
    if old_format == 0:
        for key in ("format", "eval_iter"):
            del state[key]
    (folder / "state.json").write_text(json.dumps(state))
    saved = json.loads((folder / "batches-0.json").read_text())
    (folder / "batches-0.json").unlink()
    tensors = load_file(folder / "rng-0.safetensors")
    generator = torch.from_numpy(np.frombuffer(base64.b64decode(saved["generator"]), dtype=np.uint8).copy())
    tensors["sampler" if old_format == 0 else "batches"] = generator
    save_file(tensors, folder / "rng-0.safetensors")


@pytest.mark.e2e
@pytest.mark.parametrize("old_format", [0, 1])
def test_an_older_checkpoint_resumes_exactly(tiny_recipe, workdir, old_format):
    """A checkpoint as hfgpt 0.1 wrote it (format 0: no format, no eval_iter, the batches' generator
    named "sampler") or as format 1 (the generator a tensor "batches" in rng-0.safetensors) resumes
    to the same weights as today's checkpoint of the same iteration."""
    recipe = str(tiny_recipe(max_iters=6, eval_interval=3, always_save_checkpoint=True, keep_last=None))
    assert train.main([recipe]) == 0
    old = workdir / "out" / "checkpoints" / "iter-000003"
    assert train.main([recipe, "--init_from=resume", f"--resume_from={old}", f"--out_dir={workdir / 'now'}"]) == 0
    as_older_format(old, old_format)
    assert train.main([recipe, "--init_from=resume", f"--resume_from={old}", f"--out_dir={workdir / 'then'}"]) == 0
    now, then = load_file(workdir / "now" / "model.safetensors"), load_file(workdir / "then" / "model.safetensors")
    assert now.keys() == then.keys() and all((now[k] == then[k]).all() for k in now)


def test_a_newer_format_is_refused_in_one_line(tiny_recipe, workdir, capsys):
    recipe = str(tiny_recipe(max_iters=2, eval_interval=2))
    assert train.main([recipe]) == 0
    folder = workdir / "out" / "checkpoints" / "iter-000002"
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**state, "format": 99}))
    capsys.readouterr()
    assert train.main([recipe, "--init_from=resume", "--max_iters=4"]) != 0
    [line] = error_lines(capsys)
    assert "state.json is format 99, written by a newer hfgpt" in line and "pip install -U hfgpt" in line

    meta_path = workdir / "data" / "tiny" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format": 2}))
    assert "meta.json is format 2, written by a newer hfgpt" in meta_problem(workdir / "data" / "tiny")
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format": "one"}))
    assert meta_problem(workdir / "data" / "tiny").endswith("meta.json gives format 'one', not a number")
