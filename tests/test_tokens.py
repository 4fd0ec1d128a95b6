"""Tokenizers and token files: fast encoders give the tokenizer's exact ids, bpe learns and round-trips,
uint32 and sharded files train, windows never cross a shard, nanoGPT folders train as they are."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast, pipeline

from hfgpt import prepare, train
from hfgpt.data import shards
from hfgpt.config import load_recipe
from hfgpt.data.batches import Batches, TokenShards, load_tokens, to_device
from hfgpt.data.encode import encoder_for, tokenizers_encoder
from hfgpt.core.errors import UserError
from hfgpt.data.nanogpt_data import read_meta_pkl
from hfgpt.data.tokenizer import byte_tokenizer, char_tokenizer, load_tokenizer, train_bpe
from tests.conftest import TINY
from tests.helpers import read_metrics

QUICK = {**TINY, "max_iters": 6, "eval_interval": 6, "eval_iters": 2, "warmup_iters": 1, "lr_decay_iters": 6}
TRICKY = ["x<|endoftext|>y", "\u65e5\u672c \u2713 \U0001f600 caf\u00e9", " \t\r\n  lead and trail  \n\n", "", "a" * 3000]


def quick(workdir, **values) -> list[str]:
    path = workdir / "r.yaml"
    path.write_text(json.dumps({**QUICK, "out_dir": str(workdir / "out"), **values}))
    return [str(path)]


@pytest.mark.e2e
@pytest.mark.parametrize("kind, fast", [("gpt2", "tiktoken_encoder"), ("char", "char_encoder"), ("byte", "byte_encoder"),
                                        ("bpe", "tokenizers_encoder")])
def test_fast_encoders_give_the_tokenizers_ids(kind, fast, gpt2_dir, shakespeare_text):
    text = shakespeare_text[:200_000]
    tok = {"gpt2": lambda: load_tokenizer(str(gpt2_dir)), "char": lambda: char_tokenizer(set(text)),
           "byte": byte_tokenizer, "bpe": lambda: train_bpe(iter([text]), 600)}[kind]()
    encode = encoder_for(tok)
    assert fast in encode.__qualname__
    texts = [text, *TRICKY]
    for got, want in zip(encode(texts), tokenizers_encoder(tok)(texts)):
        assert got.tolist() == want.tolist()
    # a literal "<|endoftext|>" in a document is text, not the separator
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert eot not in encode([TRICKY[0]])[0].tolist()


@pytest.mark.e2e
def test_bpe_4096_round_trips_shakespeare_and_samples_through_pipeline(workdir, shakespeare, shakespeare_text):
    assert train.main(quick(workdir, source=str(shakespeare), tokenizer="bpe", vocab_size=4096, n_embd=32)) == 0
    folder = workdir / "data" / "tiny"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["vocab_size"] == 4096 and meta["dtype"] == "uint16" and meta["split"] == "contiguous"
    tok = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    ids = np.concatenate([np.fromfile(folder / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert tok.decode(ids.tolist()) == shakespeare_text
    assert meta["train_tokens"] == int(len(ids) * 0.9) and len(ids) < 0.35 * len(shakespeare_text)
    pipe = pipeline("text-generation", model=str(workdir / "out"), device="cpu")
    text = pipe("ROMEO:", max_new_tokens=10, do_sample=False)[0]["generated_text"]
    assert text.startswith("ROMEO:") and len(tok(text[len("ROMEO:"):])["input_ids"]) >= 5


def test_bpe_on_too_little_text_says_so(workdir, capsys):
    (workdir / "t.txt").write_text("to be or not to be\n" * 200)
    assert prepare.main(["--source=t.txt", "--tokenizer=bpe", "--vocab_size=5000", "--block_size=8"]) == 2
    err = capsys.readouterr().err
    assert "learned" in err and "vocab_size=5,000" in err


def big_vocab_tokenizer(folder):
    """A word-level tokenizer of 70,001 ids: more than uint16 holds."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(70_000)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words + ["<unk>"])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<unk>").save_pretrained(folder)
    return words


@pytest.mark.e2e
def test_uint32_files_train(workdir):
    words = big_vocab_tokenizer(workdir / "bigtok")
    ids = np.tile(np.arange(69_950, 70_000), 80)  # a cycle of 50 words, all above uint16: learnable
    (workdir / "w.txt").write_text(" ".join(words[i] for i in ids), encoding="utf-8")
    assert train.main(quick(workdir, source=str(workdir / "w.txt"), tokenizer=str(workdir / "bigtok"), max_iters=10,
                            eval_interval=10, lr_decay_iters=10)) == 0
    folder = workdir / "data" / "tiny"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["dtype"] == "uint32" and (folder / "train.bin").stat().st_size == 4 * meta["train_tokens"]
    x, y = Batches(load_tokens(folder, meta, "train"), 32, 64, seed=0).next_batch()
    assert x.max() > 65_535 and torch.equal(x[:, 1:], y[:, :-1])
    rows = read_metrics(workdir / "out")
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5  # it learns the cycle (uniform would stay at ~11.16)
    assert json.loads((workdir / "out" / "config.json").read_text())["vocab_size"] == 70_016  # 70,001 padded to 64s
    suppressed = json.loads((workdir / "out" / "generation_config.json").read_text())["suppress_tokens"]
    assert suppressed == list(range(70_001, 70_016))


def test_shards_hold_the_same_tokens_and_train(workdir, shakespeare):
    assert prepare.main([f"--source={shakespeare}", "--dataset=one", "--block_size=32"]) == 0
    assert train.main(quick(workdir, source=str(shakespeare), dataset="many", shard_size=200_000)) == 0
    one, many = workdir / "data" / "one", workdir / "data" / "many"
    meta = json.loads((many / "meta.json").read_text())
    assert [e["file"] for e in meta["shards"]["train"]] == [f"train-0000{i}.bin" for i in range(6)]
    assert [e["tokens"] for e in meta["shards"]["train"]] == [200_000] * 5 + [3_854]
    assert [{k: e[k] for k in ("file", "tokens")} for e in meta["shards"]["val"]] == [{"file": "val.bin", "tokens": 111_540}]
    joined = b"".join((many / e["file"]).read_bytes() for e in meta["shards"]["train"])
    assert joined == (one / "train.bin").read_bytes() and (many / "val.bin").read_bytes() == (one / "val.bin").read_bytes()
    assert sorted(p.name for p in many.glob("*.bin")) == sorted(e["file"] for s in meta["shards"].values() for e in s)
    assert (workdir / "out" / "model.safetensors").exists()


def test_windows_sample_shards_by_size_and_never_cross_them():
    shards = [np.arange(0, 100, dtype=np.uint16), np.arange(1000, 1300, dtype=np.uint16), np.arange(5000, 5005, dtype=np.uint16)]
    x, y = Batches(TokenShards(shards), block_size=8, batch_size=20_000, seed=0).next_batch()
    window = torch.cat([x, y[:, -1:]], dim=1)
    assert torch.all(window[:, 1:] - window[:, :-1] == 1)  # consecutive ids: inside one shard
    share = (window[:, 0] < 1000).float().mean().item()
    assert abs(share - 92 / (92 + 292)) < 0.02  # 92 and 292 places for a window; the 5-token shard has none
    # one file: the same draws as nanoGPT's get_batch with torch.randint
    g = torch.Generator().manual_seed(3)
    starts = torch.randint(100 - 8, (5,), generator=g).numpy()
    assert Batches(shards[0], 8, 5, seed=3).next_batch()[0][:, 0].tolist() == shards[0][starts].tolist()


def test_cuda_copy_pins_the_window_once_and_slices_it_on_the_device(monkeypatch):
    """A fake CUDA device records pin_memory and the copy: one contiguous (B, T + 1) window is pinned
    and copied, asynchronously; x and y are views of the one device buffer."""
    calls, real_to = [], torch.Tensor.to

    def pin_memory(self):
        calls.append(("pin", tuple(self.shape), self.is_contiguous()))
        return self

    def to(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            calls.append(("copy", tuple(self.shape), self.is_contiguous(), kwargs.get("non_blocking")))
            return self.clone()  # stands for the device tensor
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    window = Batches(np.arange(100, dtype=np.uint16), block_size=8, batch_size=4, seed=0).next_window()
    x, y = to_device(window, torch.device("cuda", 0))
    assert calls == [("pin", (4, 9), True), ("copy", (4, 9), True, True)]
    assert torch.equal(x, window[:, :-1]) and torch.equal(y, window[:, 1:])
    assert y.data_ptr() - x.data_ptr() == 8 and x.data_ptr() != window.data_ptr()  # sliced after the one copy
    x, y = to_device(window, torch.device("cpu"))
    assert x.data_ptr() == window.data_ptr() and len(calls) == 2  # the CPU copies nothing


def write_nanogpt_folder(folder, text):
    """What nanoGPT's data/shakespeare_char/prepare.py writes."""
    folder.mkdir(parents=True)
    chars = sorted(set(text))
    stoi, itos = {c: i for i, c in enumerate(chars)}, dict(enumerate(chars))
    n = len(text)
    np.array([stoi[c] for c in text[:int(n * 0.9)]], dtype=np.uint16).tofile(folder / "train.bin")
    np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16).tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    return stoi


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["in place", "as source"])
def test_nanogpt_data_folder_trains_as_is(workdir, shakespeare_text, where):
    text = shakespeare_text[:200_000]
    nano = workdir / "data" / "tiny" if where == "in place" else workdir / "nanoGPT" / "data" / "sc"
    stoi = write_nanogpt_folder(nano, text)
    before = {n: (nano / n).read_bytes() for n in ("train.bin", "val.bin", "meta.pkl")}
    assert train.main(quick(workdir, **({} if where == "in place" else {"source": str(nano)}))) == 0
    folder = workdir / "data" / "tiny"
    meta = json.loads((folder / "meta.json").read_text())
    assert {n: (nano / n).read_bytes() for n in before} == before
    assert (folder / "train.bin").read_bytes() == before["train.bin"]
    assert (meta["train_tokens"], meta["vocab_size"], meta["tokenizer"]) == (180_000, len(stoi) + 2, "char")
    tok = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    assert tok("ROMEO:")["input_ids"] == [stoi[c] for c in "ROMEO:"]
    assert tok.eos_token_id == len(stoi) == meta["eot_token_id"]
    assert (workdir / "out" / "model.safetensors").exists()
    assert train.main(quick(workdir, **({} if where == "in place" else {"source": str(nano)}))
                      + ["--overwrite_out_dir=True"]) == 0  # no-op import


class Smuggler:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("payload, message", [
    ({"vocab_size": 2, "stoi": {"a": 0, "b": 1}, "itos": {0: "a", 1: "b"}, "x": Smuggler()}, "posix.system is not allowed"),
    ({"vocab_size": 2, "stoi": {"a": 0.0, "b": 1}}, "other than dicts of strings and ints"),
    ({"vocab_size": 2, "stoi": {"a": 0, "ab": 1}}, "no 'stoi' mapping single characters"),
    ({"vocab_size": 2, "stoi": {"a": 0, "b": 0}}, "no 'stoi' mapping single characters"),
])
def test_meta_pkl_reads_only_plain_dicts(workdir, payload, message):
    (workdir / "meta.pkl").write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match=message):
        read_meta_pkl(workdir / "meta.pkl")
    assert not (workdir / "pwned").exists()


def test_recipe_source_accepts_a_list_or_one_value():
    assert load_recipe(None, ["--source=[a.txt, docs/]"]).data.source == ["a.txt", "docs/"]
    assert load_recipe(None, ["--source=a.txt"]).data.source == "a.txt"
    assert load_recipe(None, {"source": ["x"], "file_glob": ["*.md", "*.py"]}).data.file_glob == ["*.md", "*.py"]
    with pytest.raises(UserError, match="vocab_size"):
        load_recipe(None, ["--tokenizer=bpe"])
    with pytest.raises(UserError, match="errors='bad'"):
        load_recipe(None, ["--errors=bad"])


@pytest.mark.parametrize("total, shard_size, n_val", [(0, 3, 0), (1, 3, 1), (20, 7, 0), (20, 7, 6), (21, 7, 7), (21, 7, 8),
                                                      (100, 10, 35), (100, 1, 99)])
def test_moving_a_streams_tail_into_val_keeps_every_token(tmp_path, monkeypatch, total, shard_size, n_val):
    monkeypatch.setattr(shards, "COPY_TOKENS", 3)
    data = np.arange(total, dtype=np.uint16)
    stream, val = (shards.ShardWriter(tmp_path, s, np.uint16, shard_size) for s in ("train", "val"))
    for i in range(0, total, 4):
        stream.write(data[i:i + 4])
    shards.move_tail(stream, val, n_val)
    entries = {"train": stream.close(), "val": val.close()}
    for split, want in (("train", data[:total - n_val]), ("val", data[total - n_val:])):
        got = [np.fromfile(tmp_path / e["file"], dtype=np.uint16) for e in entries[split]]
        assert np.concatenate(got or [np.empty(0, np.uint16)]).tolist() == want.tolist()
        assert [e["tokens"] for e in entries[split]] == [len(g) for g in got]
        assert all(e["tokens"] == shard_size for e in entries[split][:-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(e["file"] for s in entries.values() for e in s)
