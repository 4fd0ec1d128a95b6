"""bench prepare: measures a real prepare in a child process and, against nanoGPT's approach
(tiktoken inside datasets.map), checks that both wrote the same ids."""

import json

import numpy as np
import pytest

from hfgpt.bench import prepare as bench_prepare
from hfgpt.data.nanogpt_data import same_tokens


@pytest.mark.e2e
def test_compare_with_tiktoken_map_on_a_generated_corpus(workdir, gpt2_dir, shakespeare):
    assert bench_prepare.main([f"--tokenizer={gpt2_dir}", "--dataset=b", "--block_size=64", "--corpus_mb=1",
                               f"--corpus_from={shakespeare}", "--compare_tiktoken", "--json=bench.json"]) == 0
    result = json.loads((workdir / "bench.json").read_text())
    corpus = workdir / "data" / "bench-corpus" / "corpus-1mb.jsonl"
    docs = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    assert corpus.stat().st_size >= 1_000_000 and len(docs) > 20 and all(docs)
    meta = json.loads((workdir / "data" / "b-bench" / "meta.json").read_text())
    assert meta["documents"]["train"] + meta["documents"]["val"] == len(docs)
    assert result["identical_ids"] is True and result["tokens"] == meta["train_tokens"] + meta["val_tokens"]
    pair = result["pairs"][0]
    assert pair["ratio"] > 0 and pair["hfgpt_peak_rss_mb"] > 50 and pair["tiktoken_map_peak_rss_mb"] > 50


def test_same_tokens_finds_one_changed_id_across_shards(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir(), theirs.mkdir()
    ids = np.arange(50, dtype=np.uint16)
    ids[:30].tofile(ours / "train-00000.bin"), ids[30:45].tofile(ours / "train-00001.bin"), ids[45:].tofile(ours / "val.bin")
    meta = {"dtype": "uint16", "shards": {"train": [{"file": "train-00000.bin"}, {"file": "train-00001.bin"}],
                                          "val": [{"file": "val.bin"}]}}
    ids[:45].tofile(theirs / "train.bin"), ids[45:].tofile(theirs / "val.bin")
    assert same_tokens(ours, meta, theirs)
    changed = ids[:45].copy()
    changed[40] = 7
    changed.tofile(theirs / "train.bin")
    assert not same_tokens(ours, meta, theirs)
    ids[:44].tofile(theirs / "train.bin")
    assert not same_tokens(ours, meta, theirs)
