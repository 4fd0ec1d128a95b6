"""Data that changed, or cannot be read, is noticed: a source appended to while prepare reads it, a
token file overwritten in place, a meta.json that is corrupt or lacks a key, an evaluation on ids
renumbered by a later prepare; and each bad input is one line: a full disk during prepare, a table
column of lists, an unreadable file, a malformed JSON line, a dataset name that is a path, a
download that stalls."""

import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hfgpt import eval as hfgpt_eval
from hfgpt import prepare, train
from hfgpt.data import downloads
from hfgpt.data import prepare as data_prepare
from tests.conftest import PYTHON, LocalServer, run_env
from tests.helpers import error_lines, without_file_permissions_bypass

SHORT = {"max_iters": 4, "eval_interval": 4, "eval_iters": 2, "log_interval": 2, "warmup_iters": 1, "lr_decay_iters": 4}


def token_files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}


def test_a_source_appended_to_while_it_is_read_is_read_again(tiny_recipe, workdir, monkeypatch, capsys):
    """Between the vocabulary's pass and the ids' pass over the text, new characters are appended:
    on main the vocabulary lacked them (ids of <unk>), meta.json recorded the new text, and every
    later prepare said "up to date". Now the change is seen and the text read again: the files
    equal those of a prepare of the final text."""
    recipe = str(tiny_recipe())
    source = workdir / "tiny.txt"
    real, appended = data_prepare.write_tokens, []

    def write_tokens(*args, **kwargs):
        if not appended:  # the vocabulary has been built from the text as it was
            with open(source, "a", encoding="utf-8") as f:
                f.write("\nÆGIR ÞOR: ØRE!\n")
            appended.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(data_prepare, "write_tokens", write_tokens)
    assert prepare.main([recipe]) == 0
    assert "changed while it was being read: reading it again" in capsys.readouterr().out
    monkeypatch.setattr(data_prepare, "write_tokens", real)  # (undo() would also undo workdir's chdir)
    assert prepare.main([recipe, "--dataset=fresh"]) == 0
    got, fresh = (workdir / "data" / name for name in ("tiny", "fresh"))
    assert token_files(got) == token_files(fresh)
    vocab_sizes = [json.loads((folder / "meta.json").read_text())["vocab_size"] for folder in (got, fresh)]
    assert vocab_sizes[0] == vocab_sizes[1]


def test_a_source_that_never_stops_changing_is_one_line(tiny_recipe, workdir, monkeypatch, capsys):
    recipe = str(tiny_recipe())
    source = workdir / "tiny.txt"
    real = data_prepare.write_tokens

    def write_tokens(*args, **kwargs):
        with open(source, "a", encoding="utf-8") as f:
            f.write("more\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(data_prepare, "write_tokens", write_tokens)
    assert prepare.main([recipe]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and "changed each of the 3 times it was read" in errors[0]
    assert not (workdir / "data" / "tiny" / "meta.json").exists()


def test_an_eval_on_data_prepared_again_with_renumbered_ids_is_refused(tiny_recipe, workdir, capsys):
    """One character of the source replaced by another the text lacks: the vocabulary keeps its size
    but its ids move. On main the old model was scored on the new ids (another loss, silently)."""
    recipe = str(tiny_recipe(**SHORT))
    assert train.main([recipe]) == 0
    source = workdir / "tiny.txt"
    text = source.read_text(encoding="utf-8")
    assert "z" in text and "~" not in text
    source.write_text(text.replace("z", "~"), encoding="utf-8")
    assert prepare.main([recipe]) == 0
    capsys.readouterr()
    assert hfgpt_eval.main([str(workdir / "out")]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and "another vocabulary" in errors[0]
    assert not (workdir / "out" / "eval_results.json").exists()


def test_a_token_file_overwritten_in_place_is_noticed(tiny_recipe, workdir, capsys):
    """val.bin replaced by random bytes of the same size: on main an IndexError at the first
    evaluation. Its content is checked when its time changed: prepared again with the source,
    one line without it."""
    recipe = str(tiny_recipe(**SHORT))
    assert prepare.main([recipe]) == 0
    val = workdir / "data" / "tiny" / "val.bin"
    whole = val.read_bytes()
    val.write_bytes(np.random.default_rng(0).integers(0, 65535, len(whole) // 2, dtype=np.uint16).tobytes())
    capsys.readouterr()
    assert train.main([recipe, "--source=None"]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and "val.bin changed since it was prepared" in errors[0]
    assert prepare.main([recipe]) == 0  # with the source: made again
    assert val.read_bytes() == whole
    os.utime(val)  # touched, not changed: still fine, and the new time is recorded
    assert train.main([recipe, "--source=None"]) == 0


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["not JSON", "no vocab_size", "not an object"])
def test_a_corrupt_meta_json_is_prepared_again_or_one_line(tiny_recipe, workdir, capsys, damage):
    recipe = str(tiny_recipe(**SHORT))
    assert prepare.main([recipe]) == 0
    path = workdir / "data" / "tiny" / "meta.json"
    meta = json.loads(path.read_text())
    path.write_text({"not JSON": '{"vocab_size": 6', "not an object": "[1, 2]",
                     "no vocab_size": json.dumps({k: v for k, v in meta.items() if k != "vocab_size"})}[damage])
    capsys.readouterr()
    assert train.main([recipe, "--source=None"]) == 2  # no source to prepare from
    errors = error_lines(capsys)
    assert len(errors) == 1 and "meta.json" in errors[0] and "prepare" in errors[0]
    assert prepare.main([recipe]) == 0  # with it: not "up to date", prepared again
    assert "preparing" in capsys.readouterr().out and json.loads(path.read_text())["vocab_size"] == meta["vocab_size"]
    assert train.main([recipe, "--source=None"]) == 0


@pytest.mark.parametrize("step", ["prepare", "train"])
def test_a_full_disk_during_prepare_names_the_data_folder(tiny_recipe, workdir, monkeypatch, capsys, step):
    recipe = str(tiny_recipe(**SHORT))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_prepare, "write_tokens", full)
    assert (prepare if step == "prepare" else train).main([recipe]) == 2
    errors = error_lines(capsys)
    folder = workdir / "data" / "tiny"
    assert len(errors) == 1 and f"no space left on the device of {folder.relative_to(workdir)}" in errors[0]
    assert "this save needs about" in errors[0] and "init_from=resume" not in errors[0]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else True


@pytest.mark.parametrize("rows, kind", [([{"text": ["a", "b"]}, {"text": ["c"]}], "List"),
                                        ([{"text": {"a": "x"}}, {"text": {"a": "y"}}], "dict")])
@pytest.mark.parametrize("streaming", [False, True])
def test_a_text_column_of_lists_or_structs_is_one_line(workdir, capsys, rows, kind, streaming):
    (workdir / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert prepare.main(["--source=rows.jsonl", "--dataset=rows", "--block_size=2", f"--streaming={streaming}"]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and f"holds {kind}" in errors[0] and "not text" in errors[0]


@pytest.mark.parametrize("streaming", [False, True])
def test_a_malformed_json_line_is_named_without_the_utf8_hint(workdir, capsys, streaming):
    (workdir / "rows.jsonl").write_text('{"text": "one"}\n{"text": "broken\n{"text": "three"}\n')
    assert prepare.main(["--source=rows.jsonl", "--dataset=rows", "--block_size=2", f"--streaming={streaming}"]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and "rows.jsonl line 2 is not a JSON object" in errors[0] and "errors: replace" not in errors[0]


@pytest.mark.e2e
@pytest.mark.parametrize("what", ["a file", "a file in a folder", "a folder"])
def test_an_unreadable_source_is_one_line(workdir, shakespeare_text, what):
    """chmod 000, as a user who is not root (root reads anything: its bypass is dropped for the test)."""
    folder = workdir / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(shakespeare_text[:20_000])
    (folder / "b.txt").write_text(shakespeare_text[20_000:40_000])
    locked = {"a file": folder / "b.txt", "a file in a folder": folder / "b.txt", "a folder": folder}[what]
    source = folder / "b.txt" if what == "a file" else folder
    os.chmod(locked, 0)
    try:
        done = subprocess.run(without_file_permissions_bypass(
            [PYTHON, "-m", "hfgpt.prepare", f"--source={source}", "--dataset=locked", "--block_size=8"]),
            cwd=workdir, env=run_env(), capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(locked, 0o755 if locked.is_dir() else 0o644)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(errors) == 1 and f"source {locked} cannot be read (permission denied" in errors[0]


@pytest.mark.parametrize("name", ["../../outside", "{workdir}/absolute", "", ".", "a/b"])
def test_a_dataset_that_is_not_one_folder_name_is_refused(workdir, capsys, monkeypatch, name):
    (workdir / "t.txt").write_text("some text " * 200)
    (workdir / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(workdir / "deep" / "er")
    before = sorted(str(p) for p in workdir.rglob("*"))
    name = name.format(workdir=workdir)
    assert prepare.main([f"--source={workdir / 't.txt'}", f"--dataset={name}", "--block_size=8"]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and "is not one folder name" in errors[0]
    assert sorted(str(p) for p in workdir.rglob("*")) == before  # on main: data_dir/../../outside, /abs, data/


def test_a_stalled_download_says_how_many_bytes_came(workdir, monkeypatch, capsys, shakespeare_text):
    (workdir / "served").mkdir()
    (workdir / "served" / "input.txt").write_text(shakespeare_text[:5000])
    monkeypatch.setattr(downloads, "TIMEOUT", 0.5)
    monkeypatch.setattr(downloads, "TRIES", 1)
    server = LocalServer(workdir / "served", stall=12, stall_seconds=3)
    try:
        assert prepare.main([f"--source={server.url}/input.txt", "--dataset=web", "--block_size=8"]) == 2
    finally:
        server.stop()
    errors = error_lines(capsys)
    assert len(errors) == 1 and "the connection broke after 12 bytes" in errors[0]
