"""The baseline that `python -m hfgpt.bench prepare --compare_tiktoken` races: nanoGPT's openwebtext
approach, written for this benchmark (no nanoGPT code), on a .jsonl corpus of documents.

    python -m hfgpt.bench.tiktoken_map CORPUS.jsonl OUT_DIR --gpt2_dir=DIR --num_proc=2 --val_ids=val.npy

Steps, as the approach takes them: `datasets.load_dataset("json")`; a train/val split by document
(here the documents listed in val.npy, so both sides hold the same documents and the files can be
compared byte for byte); tiktoken's GPT-2 `encode_ordinary` + the end-of-text id per document
inside `datasets.map(num_proc=...)` (an empty document gets just the end-of-text id, where hfgpt
skips it: the generated corpora have none); then each split concatenated into a uint16 np.memmap,
1024 contiguous batches at a time. tiktoken's GPT-2 encoding is built from GPT-2's own
encoder.json and vocab.bpe in gpt2_dir (tiktoken cannot download here).
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hfgpt.config import Command, Parsed, command, option
from hfgpt.core.errors import UserError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = 50256


def gpt2_encoding(gpt2_dir: Path):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    names = ("vocab.bpe", "encoder.json") if (gpt2_dir / "vocab.bpe").exists() else ("merges.txt", "vocab.json")
    ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_dir / names[0]), str(gpt2_dir / names[1]))
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT})


ENC = None  # set before map; the forked workers inherit it, as nanoGPT's module-level `enc`


def process(example):
    """The map function: ids of one document plus the end-of-text id, and their number."""
    ids = ENC.encode_ordinary(example["text"])
    ids.append(EOT)
    return {"ids": ids, "len": len(ids)}


def run(corpus: Path, out: Path, gpt2_dir: Path, num_proc: int, val_ids: np.ndarray) -> int:
    import datasets

    global ENC
    ENC = gpt2_encoding(gpt2_dir)
    docs = datasets.load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(out / "cache"))
    is_val = np.zeros(len(docs), dtype=bool)
    is_val[val_ids] = True
    splits = {"train": docs.select(np.flatnonzero(~is_val)), "val": docs.select(np.flatnonzero(is_val))}
    total = 0
    for split, dset in splits.items():
        tokenized = dset.map(process, remove_columns=dset.column_names, num_proc=num_proc,
                             desc=f"tokenizing {split}")
        n = int(np.sum(tokenized["len"], dtype=np.uint64))
        arr = np.memmap(out / f"{split}.bin", dtype=np.uint16, mode="w+", shape=(n,))
        at, batches = 0, min(1024, len(tokenized))
        for b in range(batches):
            batch = tokenized.shard(num_shards=batches, index=b, contiguous=True).with_format("numpy")
            ids = np.concatenate(batch["ids"])
            arr[at:at + len(ids)] = ids
            at += len(ids)
        arr.flush()
        total += n
    return total


@dataclass
class TiktokenMapOptions:
    corpus: str = option(positional=True)
    """.jsonl file with a text field per line."""
    out: str = option(positional=True)
    """Folder for train.bin and val.bin."""
    gpt2_dir: str = option(positional=False)
    """Folder with GPT-2's encoder.json + vocab.bpe (or vocab.json + merges.txt)."""
    val_ids: str = option(positional=False)
    """.npy of the document indices that validate."""
    num_proc: int = option(os.cpu_count() or 1, min=1)
    """Processes for datasets.map."""


@command(Command("bench.tiktoken_map", __doc__.split("\n\n")[0], options=TiktokenMapOptions,
                 usage="CORPUS OUT --gpt2_dir=DIR --val_ids=VAL.npy [--num_proc=N]"))
def main(parsed: Parsed) -> int:
    o = parsed.options
    if o.gpt2_dir is None or o.val_ids is None:
        raise UserError("--gpt2_dir and --val_ids are required")
    Path(o.out).mkdir(parents=True, exist_ok=True)
    total = run(Path(o.corpus), Path(o.out), Path(o.gpt2_dir), o.num_proc, np.load(o.val_ids))
    print(f"tokens: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
