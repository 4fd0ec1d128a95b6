"""nanoGPT data folders (train.bin, val.bin, maybe meta.pkl) trained as they are.

    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --source=../nanoGPT/data/shakespeare_char
    python -m hfgpt.train my.yaml --data_dir=../nanoGPT/data --dataset=shakespeare_char   # in place, no copy

The token files keep their bytes (uint16, as nanoGPT writes them). meta.pkl is a pickle, so it is
read with hfgpt.nanogpt.read_meta_pkl, which builds nothing but dicts, strings and ints; its
stoi becomes a char tokenizer with the same ids, plus <|endoftext|> and <unk> after them. A
folder without meta.pkl holds GPT-2 ids (nanoGPT's convention): set `tokenizer` to gpt2 or a
GPT-2 tokenizer folder. Imported into another dataset folder, the .bin files are copied there.
"""

import json
import shutil
from pathlib import Path

import numpy as np

from hfgpt import __version__
from hfgpt.config import Recipe
from hfgpt.errors import UserError
from hfgpt.shards import publish, work_dir
from hfgpt.sources import stamp_of
from hfgpt.tokenizer import char_tokenizer_from_stoi, eot_id, load_tokenizer

DTYPE = np.uint16  # nanoGPT's prepare scripts always write uint16
CHECK_TOKENS = 1 << 24


def import_dir(recipe: Recipe, src: Path, out: Path) -> dict:
    """Write meta.json and tokenizer/ for the nanoGPT folder `src` into `out` (copying the .bin
    files when they differ), through a temporary folder; returns the meta."""
    if (src / "meta.pkl").exists():
        from hfgpt.nanogpt import read_meta_pkl  # imports torch (~3 s) for its checkpoint half: only here

        tokenizer, name = char_tokenizer_from_stoi(read_meta_pkl(src / "meta.pkl")["stoi"]), "char"
    elif recipe.data.tokenizer in ("char", "byte", "bpe"):
        raise UserError(f"{src} has train.bin and val.bin but no meta.pkl, so it holds GPT-2 ids (nanoGPT's "
                        f"convention), not tokenizer={recipe.data.tokenizer}: set tokenizer to gpt2 or a GPT-2 "
                        "tokenizer folder")
    else:
        tokenizer, name = load_tokenizer(recipe.data.tokenizer), recipe.data.tokenizer
    shards = {split: [{"file": f"{split}.bin", "tokens": _count(src / f"{split}.bin", len(tokenizer))}]
              for split in ("train", "val")}
    with work_dir(out) as work:
        if src.resolve() != out.resolve():
            for split in ("train", "val"):
                shutil.copyfile(src / f"{split}.bin", work / f"{split}.bin")
        tokenizer.save_pretrained(work / "tokenizer")
        meta = {
            "hfgpt_version": __version__,
            "dataset": recipe.data.dataset,
            "vocab_size": len(tokenizer),
            "dtype": np.dtype(DTYPE).name,
            "tokenizer": name,
            "eot_token_id": eot_id(tokenizer),
            "train_tokens": shards["train"][0]["tokens"],
            "val_tokens": shards["val"][0]["tokens"],
            "shards": shards,
            "split": "nanogpt",
            "source": recipe.data.source,
            "source_files": len(files(src)),
            "source_bytes": sum(f.stat().st_size for f in files(src)),
            "source_stamp": stamp_of(files(src)),
        }
        (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        publish(work, out)
    print(f"imported nanoGPT data {src} into {out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val "
          f"tokens, {name} tokenizer ({meta['vocab_size']:,} ids)")
    return meta


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
