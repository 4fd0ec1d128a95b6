"""nanoGPT data folders (train.bin, val.bin, maybe meta.pkl) trained as they are.

    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --source=../nanoGPT/data/shakespeare_char
    python -m hfgpt.train my.yaml --data_dir=../nanoGPT/data --dataset=shakespeare_char   # in place, no copy

The token files keep their bytes (uint16, as nanoGPT writes them). meta.pkl is a pickle, so it is
read with read_meta_pkl, which builds nothing but dicts, strings and ints; its
stoi becomes a char tokenizer with the same ids, plus <|endoftext|> and <unk> after them. A
folder without meta.pkl holds GPT-2 ids (nanoGPT's convention): set `tokenizer` to gpt2 or a
GPT-2 tokenizer folder. Imported into another dataset folder, the .bin files are copied there.
"""

import pickle
import shutil
from pathlib import Path

import numpy as np

from hfgpt.core.errors import UserError
from hfgpt.core.files import temp_dir
from hfgpt.data.meta import new_meta, write_meta
from hfgpt.data.shards import PREPARING, publish
from hfgpt.data.sources import stamp_of
from hfgpt.data.spec import DataSpec
from hfgpt.data.tokenizer import char_tokenizer_from_stoi, load_tokenizer, save_tokenizer

DTYPE = np.uint16  # nanoGPT's prepare scripts always write uint16
CHECK_TOKENS = 1 << 24


def import_dir(spec: DataSpec, src: Path, out: Path) -> dict:
    """Write meta.json and tokenizer/ for the nanoGPT folder `src` into `out` (copying the .bin
    files when they differ), through a temporary folder; returns the meta. spec.tokenizer names
    the tokenizer of a folder without meta.pkl."""
    tokenizer_name = spec.tokenizer
    if (src / "meta.pkl").exists():
        tokenizer, name = char_tokenizer_from_stoi(read_meta_pkl(src / "meta.pkl")["stoi"]), "char"
    elif tokenizer_name in ("char", "byte", "bpe"):
        raise UserError(f"{src} has train.bin and val.bin but no meta.pkl, so it holds GPT-2 ids (nanoGPT's "
                        f"convention), not tokenizer={tokenizer_name}: set tokenizer to gpt2 or a GPT-2 "
                        "tokenizer folder")
    else:
        tokenizer, name = load_tokenizer(tokenizer_name), tokenizer_name
    shards = {split: [{"file": f"{split}.bin", "tokens": _count(src / f"{split}.bin", len(tokenizer))}]
              for split in ("train", "val")}
    with temp_dir(out, PREPARING) as work:
        if src.resolve() != out.resolve():
            for split in ("train", "val"):
                shutil.copyfile(src / f"{split}.bin", work / f"{split}.bin")
        save_tokenizer(tokenizer, work / "tokenizer")
        meta = new_meta(spec.data.dataset, tokenizer, shards, "nanogpt", DTYPE, name, source=spec.data.source,
                        source_files=len(files(src)), source_bytes=sum(f.stat().st_size for f in files(src)),
                        source_stamp=stamp_of(files(src)))
        write_meta(work, meta)
        publish(work, out)
    print(f"imported nanoGPT data {src} into {out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val "
          f"tokens, {name} tokenizer ({meta['vocab_size']:,} ids)")
    return meta


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every class and function reference (and persistent ids), so a hostile pickle cannot
    run code; read_meta_pkl then accepts only dicts, strings and ints."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in meta.pkl")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a persistent reference is not allowed in meta.pkl")


def read_meta_pkl(path) -> dict:
    """nanoGPT's meta.pkl ({'vocab_size', 'itos', 'stoi'}), read without running any code."""
    try:
        with open(path, "rb") as f:
            meta = _PlainUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, RecursionError,
            MemoryError) as e:
        raise UserError(f"{path} is not a plain nanoGPT meta.pkl ({e}): only dicts of strings and ints are read") from None
    try:
        plain = isinstance(meta, dict) and _plain(meta)
    except RecursionError:
        plain = False
    if not plain:
        raise UserError(f"{path} holds something other than dicts of strings and ints: it is not nanoGPT's meta.pkl")
    stoi = meta.get("stoi")
    if (not isinstance(stoi, dict) or not all(isinstance(k, str) and len(k) == 1 for k in stoi)
            or len(set(stoi.values())) != len(stoi) or min(stoi.values(), default=0) < 0):
        raise UserError(f"{path} has no 'stoi' mapping single characters to distinct ids: it is not a char-level "
                        "nanoGPT meta.pkl")
    return meta


def _plain(value) -> bool:
    if type(value) is dict:
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return type(value) in (str, int)


def files(folder: Path) -> list[Path]:
    """The files of a nanoGPT data folder that hfgpt reads."""
    return [folder / name for name in ("train.bin", "val.bin", "meta.pkl") if (folder / name).exists()]


def _count(path: Path, vocab_size: int) -> int:
    """Tokens in a uint16 file, checking (a block at a time) that every id is in the vocabulary."""
    if path.stat().st_size % np.dtype(DTYPE).itemsize:
        raise UserError(f"{path} has an odd number of bytes: nanoGPT's token files are uint16")
    tokens = np.memmap(path, dtype=DTYPE, mode="r")
    for at in range(0, len(tokens), CHECK_TOKENS):
        top = int(tokens[at:at + CHECK_TOKENS].max())
        if top >= vocab_size:
            raise UserError(f"{path} holds token id {top:,}, but the tokenizer has {vocab_size:,} ids: set tokenizer "
                            "to the one the folder was made with")
    return len(tokens)


def same_tokens(ours: Path, meta: dict, theirs: Path) -> bool:
    """Whether hfgpt's shards in `ours` (its meta.json: `meta`) hold exactly the ids of the train.bin and
    val.bin in `theirs` (nanoGPT's uint16 files), read a block at a time."""
    for split in ("train", "val"):
        reference = np.memmap(theirs / f"{split}.bin", dtype=DTYPE, mode="r")
        at = 0
        for entry in meta["shards"][split]:
            shard = np.memmap(ours / entry["file"], dtype=np.dtype(meta["dtype"]), mode="r")
            for i in range(0, len(shard), CHECK_TOKENS):
                block = shard[i:i + CHECK_TOKENS]
                if not np.array_equal(block, reference[at + i:at + i + len(block)]):
                    return False
            at += len(shard)
        if at != len(reference):
            return False
    return True
