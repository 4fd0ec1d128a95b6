"""Model folders and checkpoints that are not what they seem are one line or passed over: a folder
that is no model, a truncated or pickled one, a newest checkpoint with another model's weights, a
Hub checkpoint that would replace a local one, a convert into a run's out_dir or killed midway;
and what hfgpt writes has the modes the umask gives, keeps the user's files, and says the right
thing when the first save finds a full disk or the evaluations' prompt cannot be encoded."""

import json
import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from transformers import GPT2Config, GPT2LMHeadModel

from hfgpt import convert, sample, train
from hfgpt import eval as hfgpt_eval
from hfgpt.core import tensor_tree
from hfgpt.core.lock import hold_lock
from hfgpt.data.tokenizer import char_tokenizer
from tests.conftest import PYTHON, run_env
from tests.helpers import error_lines
from tests.test_convert import write_nanogpt_run

SHORT = {"max_iters": 10, "eval_interval": 5, "eval_iters": 2, "log_interval": 5, "warmup_iters": 1, "lr_decay_iters": 10}


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def small_model(folder: Path, n_embd: int = 32) -> Path:
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=n_embd, n_positions=32, vocab_size=70,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(folder)
    char_tokenizer(set("abcdefghij \n")).save_pretrained(folder)
    return folder


def not_a_model(tmp_path: Path, kind: str) -> Path:
    folder = small_model(tmp_path / kind.replace(" ", "-"))
    config = folder / "config.json"
    if kind == "no model_type":
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "model_type"}))
    elif kind == "config not an object":
        config.write_text("[1, 2, 3]")
    elif kind == "config not JSON":
        config.write_text('{"model_type": "gpt2", ')
    elif kind == "truncated weights":
        os.truncate(folder / "model.safetensors", (folder / "model.safetensors").stat().st_size // 2)
    elif kind == "a malicious pickle":
        (folder / "model.safetensors").unlink()
        torch.save({"transformer.wte.weight": _Evil(str(tmp_path / "pwned"))}, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("step", ["train init_from", "sample", "eval"])
@pytest.mark.parametrize("kind", ["no model_type", "config not an object", "config not JSON", "truncated weights",
                                  "a malicious pickle"])
def test_a_folder_that_cannot_load_as_a_model_is_one_line(tiny_recipe, tmp_path, capsys, step, kind):
    """Each used to end in a traceback (ValueError, SafetensorError, UnpicklingError), or for invalid
    JSON, in advice to `hf download /the/local/folder`; the pickle runs no code either way."""
    folder = not_a_model(tmp_path, kind)
    (tmp_path / "eval.txt").write_text("abc def\nghij a b\n" * 20)
    if step == "train init_from":
        code = train.main([str(tiny_recipe(**SHORT)), f"--init_from={folder}", "--tokenizer=char", "--n_embd=32"])
    elif step == "sample":
        code = sample.main([str(folder), "--max_new_tokens=2", "--num_samples=1"])
    else:
        code = hfgpt_eval.main([str(folder), f"--text={tmp_path / 'eval.txt'}"])
    errors = error_lines(capsys)
    assert code == 2 and len(errors) == 1 and str(folder) in errors[0], errors
    assert "hf download" not in errors[0] and not (tmp_path / "pwned").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shakespeare_text):
    """A finished tiny run (checkpoints 5 and 10), copied into each test's workdir."""
    import yaml

    from tests.conftest import TINY

    made = tmp_path_factory.mktemp("trained-run")
    (made / "tiny.txt").write_text(shakespeare_text[:100_000], encoding="utf-8")
    values = {**TINY, **SHORT, "source": "tiny.txt", "out_dir": "out"}
    (made / "tiny.yaml").write_text(yaml.safe_dump(values))
    here = os.getcwd()
    os.chdir(made)
    try:
        assert train.main(["tiny.yaml"]) == 0
    finally:
        os.chdir(here)

    def copy(workdir: Path) -> Path:
        for name in ("tiny.txt", "tiny.yaml", "data", "out"):
            (shutil.copytree if (made / name).is_dir() else shutil.copy2)(made / name, workdir / name)
        return workdir / "tiny.yaml"

    return copy


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["another model's weights", "config.json edited", "optimizer.json is {}",
                                    "rng-0 missing"])
def test_a_readable_but_wrong_newest_checkpoint_falls_back_to_the_one_before(trained_run, workdir, tmp_path, capsys,
                                                                             damage):
    recipe = str(trained_run(workdir))
    newest = workdir / "out" / "checkpoints" / "iter-000010"
    if damage == "another model's weights":
        shutil.copy(small_model(tmp_path / "other", n_embd=16) / "model.safetensors", newest / "model.safetensors")
    elif damage == "config.json edited":
        config = json.loads((newest / "config.json").read_text())
        (newest / "config.json").write_text(json.dumps({**config, "n_embd": 48}))
    elif damage == "optimizer.json is {}":
        (newest / "optimizer.json").write_text("{}")
    else:
        (newest / "rng-0.safetensors").unlink()
    capsys.readouterr()
    assert train.main([recipe, "--init_from=resume", "--max_iters=12", "--eval_interval=12"]) == 0
    said = capsys.readouterr().out
    assert "iter-000010 cannot be resumed" in said and "resuming out/checkpoints/iter-000005" in said.replace(
        str(workdir) + "/", "")
    assert "fewer processes" not in said


@pytest.mark.e2e
def test_a_hub_checkpoint_that_would_replace_a_local_one_is_refused(tiny_recipe, workdir, monkeypatch, capsys):
    """resume_from=user/name downloads last-checkpoint/ as checkpoints/iter-NNNNNN: on main it replaced
    a local checkpoint of that iteration with other weights, without a word."""
    recipe = str(tiny_recipe(**SHORT))
    assert train.main([recipe]) == 0
    assert train.main([recipe, "--seed=7", "--out_dir=other"]) == 0  # another run, same iteration
    local = workdir / "out" / "checkpoints" / "iter-000010"
    before = {p.name: p.read_bytes() for p in local.iterdir()}

    def snapshot_download(repo_id, revision=None, allow_patterns=None, local_dir=None):
        shutil.copytree(workdir / "other" / "checkpoints" / "iter-000010", Path(local_dir) / "last-checkpoint")
        return local_dir

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    capsys.readouterr()
    assert train.main([recipe, "--init_from=resume", "--resume_from=someone/their-run", "--max_iters=12"]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and "is not the checkpoint" in errors[0] and str(local) in errors[0]
    assert {p.name: p.read_bytes() for p in local.iterdir()} == before
    assert not [p for p in local.parent.iterdir() if p.name.startswith(".")]
    # the same checkpoint (this run's own, pushed): used as it is
    shutil.rmtree(workdir / "other" / "checkpoints" / "iter-000010")
    shutil.copytree(local, workdir / "other" / "checkpoints" / "iter-000010")
    assert train.main([recipe, "--init_from=resume", "--resume_from=someone/their-run", "--max_iters=12"]) == 0


@pytest.mark.e2e
def test_convert_never_writes_over_a_run_or_a_model_unless_told(tiny_recipe, workdir, tmp_path, capsys):
    write_nanogpt_run(tmp_path, bias=True, compiled=False)
    recipe = str(tiny_recipe(**SHORT))
    assert train.main([recipe]) == 0
    out = workdir / "out"
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    to_hf = ["to-hf", str(tmp_path / "ckpt.pt"), str(out), f"--meta={tmp_path / 'meta.pkl'}"]
    capsys.readouterr()
    for args in (to_hf, ["to-nanogpt", str(out), str(out)]):
        assert convert.main(args) == 2
        errors = error_lines(capsys)
        assert len(errors) == 1 and "--overwrite=True" in errors[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    with hold_lock(out, "wait"):  # a training run holds it: refused even when told
        assert convert.main(to_hf + ["--overwrite=True"]) == 2
        assert "is in use by another hfgpt process" in error_lines(capsys)[0]
    assert convert.main(to_hf + ["--overwrite=True"]) == 0
    assert json.loads((out / "config.json").read_text())["n_embd"] == 16  # the converted model, whole
    assert (out / "notes.txt").read_text() == "mine" and not (out / "README.md").exists()  # the old card went
    assert not (out / "checkpoints").exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


KILLED_CONVERT = """
import os, signal, sys
import hfgpt.model.folder as folder
folder.save_tokenizer = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # weights written, tokenizer not
from hfgpt import convert
sys.exit(convert.main(sys.argv[1:]))
"""


@pytest.mark.e2e
def test_a_killed_convert_leaves_no_half_folder(tmp_path):
    write_nanogpt_run(tmp_path, bias=True, compiled=False)
    args = ["to-hf", str(tmp_path / "ckpt.pt"), str(tmp_path / "hf"), f"--meta={tmp_path / 'meta.pkl'}"]
    killed = subprocess.run([PYTHON, "-c", KILLED_CONVERT, *args], cwd=tmp_path, env=run_env(), capture_output=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "hf").exists()  # on main: config.json and model.safetensors, no tokenizer
    assert convert.main(args) == 0
    assert (tmp_path / "hf" / "tokenizer.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the killed one's folder is gone


@pytest.mark.e2e
def test_files_get_the_modes_the_umask_gives(tiny_recipe, workdir):
    """Under umask 022 every file is readable by others and every folder listable (mkstemp, mkdtemp
    and save_pretrained made 0600 and 0700 ones: another user of a shared dataset or model got a
    PermissionError)."""
    recipe = str(tiny_recipe(**SHORT))
    done = subprocess.run([PYTHON, "-m", "hfgpt.train", recipe], cwd=workdir, env=run_env(), capture_output=True,
                          text=True, timeout=300, preexec_fn=lambda: os.umask(0o022))  # prepares, trains, saves
    assert done.returncode == 0, done.stderr[-2000:]
    paths = [p for folder in (workdir / "data" / "tiny", workdir / "out") for p in [folder, *folder.rglob("*")]]
    wrong = {str(p.relative_to(workdir)): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (0o755 if p.is_dir() else 0o644)}
    assert len(paths) > 30 and not wrong, wrong


def test_a_full_disk_at_the_first_save_does_not_promise_earlier_checkpoints(tiny_recipe, workdir, monkeypatch, capsys):
    recipe = str(tiny_recipe(**SHORT))
    real = tensor_tree.save_file  # the optimizer's state is written by save_tree

    def full(tensors, path, *args, **kwargs):
        if path.name == "optimizer.safetensors":
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(tensor_tree, "save_file", full)
    assert train.main([recipe]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and "no space left on the device" in errors[0]
    assert "earlier checkpoints are intact" not in errors[0] and "start the run again" in errors[0]


@pytest.mark.e2e
def test_a_sample_start_the_tokenizer_lacks_is_refused_before_anything_is_written(tiny_recipe, workdir, capsys,
                                                                                 shakespeare_text):
    """The evaluations' samples start from sample_start ("\\n" by default): on a corpus without a
    newline the error named --start (sample's option) at the first evaluation, and the empty
    metrics.jsonl it left made the next run refuse out_dir as another run's."""
    (workdir / "tiny.txt").write_text(shakespeare_text[:100_000].replace("\n", " "))
    recipe = str(tiny_recipe(**SHORT))
    assert train.main([recipe, "--eval_samples=1"]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and "sample_start='\\n'" in errors[0] and "--start" not in errors[0]
    assert not (workdir / "out" / "metrics.jsonl").exists()
    assert train.main([recipe, "--eval_samples=1", "--sample_start=The"]) == 0


@pytest.mark.e2e
def test_overwrite_removes_only_what_the_replaced_run_wrote(tiny_recipe, workdir):
    """The user's vocab.txt, merges.txt and added_tokens.json in out_dir, which a char run never
    writes: on main --overwrite_out_dir=True removed them with the run (hfgpt's file names)."""
    out = workdir / "out"
    out.mkdir()
    mine = {"vocab.txt": "my words", "merges.txt": "my merges", "added_tokens.json": "{}"}
    for name, text in mine.items():
        (out / name).write_text(text)
    recipe = str(tiny_recipe(**SHORT))
    assert train.main([recipe]) == 0
    assert set(json.loads((out / "training.json").read_text())["files"]) >= {"model.safetensors", "config.json"}
    assert train.main([recipe, "--overwrite_out_dir=True", "--max_iters=5"]) == 0
    assert {name: (out / name).read_text() for name in mine} == mine
