"""meta.json: what a dataset folder holds, written by prepare (and by the nanoGPT import) last, as
the mark that the folder is complete.

    meta = new_meta(recipe, tokenizer, shards, split="contiguous", dtype="uint16", **source_facts)
    write_meta(folder, meta)
    meta = read_meta(folder)                    # None when the folder has none
    shard_problem(folder, meta)                 # None when every token file has the size meta.json gives it
    check_split_size(n_tokens, "val", block_size, folder, share=0.1)
"""

import json
from pathlib import Path

import numpy as np

from hfgpt import __version__
from hfgpt.config import Recipe
from hfgpt.core.errors import UserError
from hfgpt.core.files import atomic_write
from hfgpt.data.tokenizer import eot_id

META = "meta.json"


def read_meta(folder: Path) -> dict | None:
    path = folder / META
    return json.loads(path.read_text()) if path.exists() else None


def write_meta(folder: Path, meta: dict) -> None:
    atomic_write(folder / META, json.dumps(meta, indent=2) + "\n")


def new_meta(recipe: Recipe, tokenizer, shards: dict[str, list[dict]], split: str, dtype, tokenizer_name: str, /,
             **facts) -> dict:
    """meta.json's fields: the dataset, its tokenizer and vocabulary, the token files per split
    ([{"file", "tokens"}]), how it was split, then `facts` about the source."""
    return {
        "hfgpt_version": __version__,
        "dataset": recipe.data.dataset,
        "vocab_size": len(tokenizer),
        "dtype": np.dtype(dtype).name,
        "tokenizer": tokenizer_name,
        "eot_token_id": eot_id(tokenizer),
        "train_tokens": sum(e["tokens"] for e in shards["train"]),
        "val_tokens": sum(e["tokens"] for e in shards["val"]),
        "shards": shards,
        "split": split,
        **facts,
    }


def file_problem(path: Path, tokens: int, dtype: str) -> str | None:
    """What is wrong with one token file that should hold `tokens` ids of `dtype`, or None."""
    if not path.is_file():
        return f"{path} is missing"
    size, want = path.stat().st_size, tokens * np.dtype(dtype).itemsize
    if size != want:
        return f"{path} holds {size:,} bytes, but meta.json lists {tokens:,} {dtype} tokens ({want:,} bytes)"
    return None


def shard_problem(folder: Path, meta: dict) -> str | None:
    """The first token file of meta.json that is missing or not of its size (truncated, grown,
    replaced), or None: a cheap check (no file is read) that prepare and train make every time."""
    for entries in meta["shards"].values():
        for entry in entries:
            if problem := file_problem(folder / entry["file"], entry["tokens"], meta["dtype"]):
                return problem
    return None


def check_split_size(have: int, split: str, block_size: int, folder: Path, share: float | None = None) -> None:
    """A split must hold at least one window of block_size + 1 tokens (in one shard). `share`, the
    fraction of the text that goes to this split, sizes the advice."""
    need = block_size + 1
    if have >= need:
        return
    more = f"about {int((need - have) / share) + 1:,} more tokens of text ({share:g} of it goes to {split})" \
        if share else f"{need - have:,}+ tokens of text"
    raise UserError(f"the {split} split of {folder} has {have:,} tokens, fewer than block_size + 1 = {need:,}: "
                    f"add {more}, raise val_fraction, or lower block_size")
