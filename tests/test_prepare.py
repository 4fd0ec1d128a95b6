"""prepare: exact token files (nanoGPT's bytes for shakespeare_char, GPT-2's real ids),
uint32 for large vocabularies, no-op reruns, token files checked against meta.json, a train that
waits for a prepare publishing, and clean failures."""

import json
import os
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Tokenizer, PreTrainedTokenizerFast

from hfgpt import prepare, train
from hfgpt.config import load_recipe
from hfgpt.core.errors import UserError
from hfgpt.core.files import temp_dir
from hfgpt.data.prepare import ensure_prepared
from hfgpt.data.prepare import prepare as prepare_data
from hfgpt.data.shards import PREPARING, ShardWriter
from hfgpt.data.sources import read_pieces
from hfgpt.data.spec import data_spec
from hfgpt.data.tokenizer import load_tokenizer
from tests.tools import fault_injection
from tests.conftest import LocalServer


def run_prepare(workdir, **overrides):
    args = [f"--{k}={v}" for k, v in overrides.items()]
    assert prepare.main(args) == 0
    folder = workdir / "data" / overrides["dataset"]
    return folder, json.loads((folder / "meta.json").read_text())


def test_shakespeare_char_is_byte_identical_to_nanogpt(workdir, shakespeare, shakespeare_text):
    folder, meta = run_prepare(workdir, dataset="shakespeare_char", source=shakespeare, tokenizer="char")
    # nanoGPT's data/shakespeare_char/prepare.py, step by step
    chars = sorted(set(shakespeare_text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(shakespeare_text)
    train_ids = np.array([stoi[c] for c in shakespeare_text[:int(n * 0.9)]], dtype=np.uint16)
    val_ids = np.array([stoi[c] for c in shakespeare_text[int(n * 0.9):]], dtype=np.uint16)
    assert (folder / "train.bin").read_bytes() == train_ids.tobytes()
    assert (folder / "val.bin").read_bytes() == val_ids.tobytes()
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == "char"
    assert meta["vocab_size"] == len(chars) + 2  # + <|endoftext|> and <unk>
    assert len(meta["source_sha256"]) == 64


def test_char_round_trip_through_saved_tokenizer(workdir, shakespeare, shakespeare_text):
    folder, meta = run_prepare(workdir, dataset="sc", source=shakespeare, tokenizer="char")
    tok = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    ids = np.concatenate([np.fromfile(folder / "train.bin", dtype=np.uint16), np.fromfile(folder / "val.bin", dtype=np.uint16)])
    assert tok.decode(ids.tolist()) == shakespeare_text
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == meta["eot_token_id"]


@pytest.mark.e2e
def test_gpt2_ids_equal_the_real_gpt2_vocab(workdir, gpt2_dir, shakespeare_text):
    text = shakespeare_text[:200_000]
    (workdir / "s.txt").write_text(text, encoding="utf-8")
    folder, meta = run_prepare(workdir, dataset="s_gpt2", source=workdir / "s.txt", tokenizer=gpt2_dir, val_fraction=0.1)
    ids = np.concatenate([np.fromfile(folder / "train.bin", dtype=np.uint16), np.fromfile(folder / "val.bin", dtype=np.uint16)])
    reference = GPT2Tokenizer.from_pretrained(gpt2_dir)(text)["input_ids"]  # the slow, pure-Python GPT-2 BPE
    assert ids.tolist() == reference
    assert meta["train_tokens"] == int(len(reference) * 0.9) and meta["vocab_size"] == 50257
    assert PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer").decode(ids.tolist()) == text
    assert meta["eot_token_id"] == 50256


def test_gpt2_alias_loads_from_the_hub_cache(gpt2_dir, tmp_path):
    """`tokenizer: gpt2` goes through the Hub loading path; offline it is served from the cache."""
    import os
    from pathlib import Path

    snapshot = Path(os.environ["HF_HOME"]) / "hub" / "models--openai-community--gpt2" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True, exist_ok=True)
    load_tokenizer(str(gpt2_dir)).save_pretrained(snapshot)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    refs = snapshot.parents[1] / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "main").write_text("0" * 40)
    tok = load_tokenizer("gpt2")
    assert tok("Hello world")["input_ids"] == [15496, 995]


def test_gpt2_chunking_is_exact_at_every_cut(tmp_path, gpt2_dir, shakespeare_text):
    """Tokenizing read_chunks' pieces gives the ids of tokenizing the whole text, also with tiny
    chunks that force many cuts around spaces and newlines."""
    text = shakespeare_text[:20_000] + "\n\n  indented\n \nx  \n\ty\n"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    tok = load_tokenizer(str(gpt2_dir)).backend_tokenizer
    pieces = list(read_pieces(path, piece_chars=97))
    assert "".join(pieces) == text and len(pieces) > 100
    chunked = [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids]
    assert chunked == tok.encode(text, add_special_tokens=False).ids


def test_uint32_when_the_vocabulary_exceeds_uint16(workdir):
    words = [f"w{i}" for i in range(70_000)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words + ["<unk>"])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(workdir / "bigtok")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 70_000, size=3000)
    (workdir / "w.txt").write_text(" ".join(words[i] for i in ids), encoding="utf-8")
    folder, meta = run_prepare(workdir, dataset="big", source=workdir / "w.txt", tokenizer=workdir / "bigtok", block_size=64)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_001
    stored = np.concatenate([np.fromfile(folder / name, dtype=np.uint32) for name in ("train.bin", "val.bin")])
    assert stored.tolist() == ids.tolist() and stored.max() > 65_535


def test_unreachable_url_fails_cleanly(workdir, capsys, monkeypatch):
    monkeypatch.setattr("hfgpt.data.downloads.RETRY_WAIT", 0)
    assert prepare.main(["--dataset=gone", "--source=http://127.0.0.1:9/input.txt"]) == 2
    err = capsys.readouterr().err
    assert "could not download http://127.0.0.1:9/input.txt" in err
    assert not list((workdir / "data" / "gone").glob("*"))


def test_rerun_is_a_no_op_and_changed_settings_redo(workdir, shakespeare):
    folder, meta = run_prepare(workdir, dataset="s", source=shakespeare)
    stamp = (folder / "train.bin").stat().st_mtime_ns
    run_prepare(workdir, dataset="s", source=shakespeare)
    assert (folder / "train.bin").stat().st_mtime_ns == stamp
    _, meta2 = run_prepare(workdir, dataset="s", source=shakespeare, val_fraction=0.2)
    assert meta2["val_tokens"] == 1_115_394 - int(1_115_394 * 0.8)


@pytest.mark.parametrize("content, message", [(None, "not found"), ("", "is empty")])
def test_missing_or_empty_source(workdir, capsys, content, message):
    if content is not None:
        (workdir / "x.txt").write_text(content)
    assert prepare.main(["--dataset=x", "--source=x.txt"]) == 2
    err = capsys.readouterr().err.strip()
    assert "x.txt" in err and message in err and len(err.splitlines()) == 1
    assert not (workdir / "data" / "x" / "meta.json").exists()


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_failure_midway_leaves_no_files(workdir, shakespeare, monkeypatch, error):
    """A failure (or Ctrl-C) after some token files were written leaves nothing behind; a folder
    prepared before keeps its files."""
    calls = []

    def write(self, ids):
        calls.append(len(ids))
        if len(calls) == 3:
            raise error
        return real_write(self, ids)

    real_write = ShardWriter.write
    monkeypatch.setattr(ShardWriter, "write", write)
    recipe = load_recipe(None, ["--dataset=half", f"--source={shakespeare}", "--shard_size=100000", "--block_size=64"])
    with pytest.raises(type(error)):
        prepare_data(data_spec(recipe))
    assert len(calls) == 3 and not (workdir / "data" / "half").exists()

    monkeypatch.setattr(ShardWriter, "write", real_write)
    folder, meta = run_prepare(workdir, dataset="half", source=shakespeare)
    before = {p.name: p.read_bytes() for p in folder.glob("*.bin")}
    monkeypatch.setattr(ShardWriter, "write", write)
    calls.clear()
    with pytest.raises(type(error)):
        prepare_data(data_spec(load_recipe(None, ["--dataset=half", f"--source={shakespeare}", "--val_fraction=0.2"])))
    assert {p.name: p.read_bytes() for p in folder.glob("*.bin")} == before
    assert json.loads((folder / "meta.json").read_text()) == meta
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "tokenizer", "train.bin", "val.bin"]


def test_unknown_tokenizer_is_a_one_line_error(workdir, shakespeare, capsys):
    assert prepare.main(["--dataset=t", f"--source={shakespeare}", "--tokenizer=nobody/no-such-tokenizer"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tokenizer 'nobody/no-such-tokenizer'" in err and "hf download" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("size", [1000, 1001], ids=["truncated", "odd bytes"])
def test_token_files_are_checked_against_meta_json(tiny_recipe, workdir, capsys, size):
    recipe = str(tiny_recipe(max_iters=2, eval_interval=2, eval_iters=1))
    assert prepare.main([recipe]) == 0
    train_bin = workdir / "data" / "tiny" / "train.bin"
    whole = train_bin.read_bytes()
    os.truncate(train_bin, size)
    assert prepare.main([recipe]) == 0  # the source is there: prepared again, not "up to date"
    assert train_bin.read_bytes() == whole
    os.truncate(train_bin, size)
    capsys.readouterr()
    assert train.main([recipe, "--source=None"]) == 2  # no source to prepare from: one line, before training
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"train.bin holds {size:,} bytes, but meta.json lists {len(whole) // 2:,}" in errors[0]
    assert not (workdir / "out").exists()


@pytest.mark.e2e
def test_train_waits_for_a_prepare_that_is_publishing(workdir, shakespeare_text):
    """A train without a source, started while a prepare publishes (meta.json not there yet, the
    token files and tokenizer/ already are), waits for it instead of importing the half-published
    folder as nanoGPT data; once that prepare is gone, a folder without meta.json is refused."""
    (workdir / "t.txt").write_text(shakespeare_text[:50_000])
    folder, meta = run_prepare(workdir, dataset="pub", source="t.txt", block_size=32)
    recipe = load_recipe(None, ["--dataset=pub", "--block_size=32"])
    got = {}
    with temp_dir(folder, PREPARING) as work:  # this process is the prepare: its work folder is there
        os.replace(folder / "meta.json", work / "meta.json")  # publish has removed meta.json ...
        waiting = threading.Thread(target=lambda: got.update(meta=ensure_prepared(data_spec(recipe))))
        waiting.start()
        time.sleep(1.5)
        assert waiting.is_alive() and not got  # ... so the train waits
        os.replace(work / "meta.json", folder / "meta.json")  # ... until publish puts the new one there
    waiting.join(timeout=30)
    assert got["meta"] == meta
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "tokenizer", "train.bin", "val.bin"]
    (folder / "meta.json").unlink()  # a prepare stopped while publishing, long gone
    with pytest.raises(UserError, match="no meta.json: a prepare was stopped"):
        ensure_prepared(data_spec(recipe))


@pytest.mark.e2e
def test_prepare_survives_random_kills(tmp_path, shakespeare_text):
    """The CI-sized run of tests/tools/fault_injection.py --target=prepare (python -m tests.tools.fault_injection
    --target=prepare --kills=10 runs longer)."""
    got = fault_injection.run_prepare(tmp_path, shakespeare_text, kills=3, seed=0, say=lambda message: None)
    assert got["kills"] == 3 and got["files"] > 10


@pytest.mark.e2e
def test_what_a_killed_prepare_left_is_removed_and_a_running_ones_kept(workdir, shakespeare, capsys):
    """Temporary names carry <host>-<pid>: a dead writer's work folder, meta.json being written and
    partial download go; a live writer's partial download stays (another prepare is fetching it)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname().replace("-", "_")
    folder = workdir / "data" / "left"
    (folder / "downloads").mkdir(parents=True)
    left = [folder / f".prepare-{host}-{dead.pid}-x1y2", folder / f".meta.json.{host}-{dead.pid}-ab12.tmp",
            folder / "downloads" / f".0123456789ab-input.txt.{host}-{dead.pid}-cd34.tmp"]
    live = folder / "downloads" / f".0123456789ab-input.txt.{host}-{os.getpid()}-ef56.tmp"
    left[0].mkdir()
    (left[0] / "train-00000.bin").write_bytes(bytes(2_000_000))
    for path in left[1:] + [live]:
        path.write_bytes(bytes(1000))
    server = LocalServer(shakespeare.parent)
    try:
        assert prepare.main(["--dataset=left", f"--source={server.url}/input.txt", "--block_size=32"]) == 0
    finally:
        server.stop()
    assert [p for p in left if p.exists()] == [] and live.exists()
    assert f"removed 2.0 MB that a stopped prepare left in {folder.relative_to(workdir)}" in capsys.readouterr().out
