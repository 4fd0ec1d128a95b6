"""meta.json: what a dataset folder holds, written by prepare (and by the nanoGPT import) last, as
the mark that the folder is complete.

    meta = new_meta("shakespeare_char", tokenizer, shards, "contiguous", "uint16", "char", **source_facts)
    write_meta(folder, meta)
    meta = read_meta(folder)                    # None when the folder has none, or one that is not usable
    meta_problem(folder)                        # why the folder's meta.json is not usable (None: it is, or is absent)
    stamp_token_files(folder, meta)             # each token file's sha256 and time into meta's shard list
    shard_problem(folder, meta)                 # None when every token file is as meta.json lists it
    check_split_size(n_tokens, "val", block_size, folder, share=0.1)
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from hfgpt import __version__
from hfgpt.core.errors import UserError
from hfgpt.core.files import atomic_write
from hfgpt.core.formats import META_FORMAT, too_new
from hfgpt.data.tokenizer import eot_id

META = "meta.json"


def read_meta(folder: Path) -> dict | None:
    """The folder's meta.json, or None when it has none or one that is not usable (meta_problem says
    why): such a folder is not prepared."""
    path = folder / META
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if _problem_of(meta) is None else None


def meta_problem(folder: Path) -> str | None:
    """Why folder/meta.json cannot be used (not JSON, not an object, a field missing or of the wrong
    kind), or None when it can or is absent."""
    path = folder / META
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return f"{path} is not UTF-8 text"
    except OSError as e:
        return f"{path} cannot be read ({e.strerror})"
    except ValueError as e:
        return f"{path} is not valid JSON ({e})"
    problem = _problem_of(meta)
    return f"{path} {problem}" if problem else None


def _problem_of(meta) -> str | None:
    if not isinstance(meta, dict):
        return "is not a JSON object"
    if problem := too_new(meta, META_FORMAT):
        return problem
    kinds = {"vocab_size": int, "dtype": str, "tokenizer": str, "shards": dict, "split": str}
    missing = [k for k, kind in kinds.items() if not isinstance(meta.get(k), kind) or isinstance(meta.get(k), bool)]
    if missing:
        return f"lacks {', '.join(missing)} (or holds another kind of value there)"
    if meta["dtype"] not in ("uint16", "uint32"):
        return f"gives dtype {meta['dtype']!r}, not uint16 or uint32"
    for split in ("train", "val"):
        entries = meta["shards"].get(split)
        if not isinstance(entries, list) or not entries or not all(
                isinstance(e, dict) and isinstance(e.get("file"), str) and Path(e["file"]).name == e["file"]
                and isinstance(e.get("tokens"), int) for e in entries):
            return f"has no valid list of {split} token files in shards"
    return None


def write_meta(folder: Path, meta: dict) -> None:
    atomic_write(folder / META, json.dumps(meta, indent=2) + "\n")


def new_meta(dataset: str, tokenizer, shards: dict[str, list[dict]], split: str, dtype, tokenizer_name: str, /,
             **facts) -> dict:
    """meta.json's fields: the dataset's name, its tokenizer and vocabulary, the token files per split
    ([{"file", "tokens"}]), how it was split, then `facts` about the source."""
    return {
        "format": META_FORMAT,
        "hfgpt_version": __version__,
        "dataset": dataset,
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


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def stamp_token_files(folder: Path, meta: dict) -> None:
    """Record each token file's sha256 and modification time in meta's shard list (prepare does,
    before publishing), so that entry_problem can tell a file changed in place."""
    for entries in meta["shards"].values():
        for entry in entries:
            path = folder / entry["file"]
            entry["sha256"], entry["mtime_ns"] = sha256_of(path), path.stat().st_mtime_ns


def entry_problem(folder: Path, entry: dict, dtype: str) -> str | None:
    """What is wrong with a token file of meta.json's shard list, or None: its size, and, when its
    modification time is not the one recorded, its content (sha256; a file of the same size
    overwritten would otherwise give ids the vocabulary does not have). A file whose content
    matched gets its new time in `entry`, so it is not read again."""
    path = folder / entry["file"]
    if problem := file_problem(path, entry["tokens"], dtype):
        return problem
    if "sha256" not in entry or path.stat().st_mtime_ns == entry.get("mtime_ns"):
        return None
    if sha256_of(path) != entry["sha256"]:
        return f"{path} changed since it was prepared (its sha256 is not the one meta.json lists)"
    entry["mtime_ns"] = path.stat().st_mtime_ns
    return None


def shard_problem(folder: Path, meta: dict) -> str | None:
    """The first token file of meta.json that is missing, not of its size or changed (entry_problem),
    or None: no file is read unless its time changed. Prepare and train check this every time."""
    for entries in meta["shards"].values():
        for entry in entries:
            if problem := entry_problem(folder, entry, meta["dtype"]):
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
