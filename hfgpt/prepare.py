"""Prepare: text -> token files (train.bin, val.bin), meta.json and the tokenizer folder.

    python -m hfgpt.prepare recipes/shakespeare_char.yaml
    python -m hfgpt.prepare recipes/my_dataset.yaml --source=notes.txt --tokenizer=gpt2

`python -m hfgpt.train` runs this itself when the dataset's files are missing or were made
with other settings. Output, in data_dir/dataset/:
  train.bin, val.bin  flat token ids (uint16 when the vocabulary fits, else uint32), as nanoGPT's
  meta.json           vocab_size, dtype, tokenizer, token counts, source and its sha256
  tokenizer/          the tokenizer as a PreTrainedTokenizerFast folder
A single text file is one stream of tokens split as nanoGPT splits it: the first
1 - val_fraction of the tokens train, the rest validate.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from hfgpt import __version__
from hfgpt.config import Recipe, parse_cli
from hfgpt.errors import UserError, cli
from hfgpt.tokenizer import char_tokenizer, eot_id, load_tokenizer

CHUNK_CHARS = 1 << 20  # text per dataset row while tokenizing; bounds memory per batch
BIG_SOURCE = 32 << 20  # bytes of text from which tokenizing runs in parallel by default
# meta.json keys that must match the recipe for the prepared files to be reused.
SETTINGS = ("source", "tokenizer", "val_fraction")


def dataset_dir(recipe: Recipe) -> Path:
    return Path(recipe.data.data_dir) / recipe.data.dataset


def read_meta(folder: Path) -> dict | None:
    path = folder / "meta.json"
    return json.loads(path.read_text()) if path.exists() else None


def _is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def download(url: str, dest: Path) -> None:
    """Fetch `url` into `dest` through a temporary file, so a broken download leaves nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    print(f"downloading {url} -> {dest}")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, f, length=1 << 20)
        os.replace(tmp, dest)
    except OSError as e:
        raise UserError(f"could not download {url} ({e}): download it yourself to {dest} and run again") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve_source(recipe: Recipe) -> Path:
    """The local text file for the recipe's source, downloading a URL into the dataset folder once."""
    source = recipe.data.source
    if source is None:
        raise UserError(f"{dataset_dir(recipe)}/meta.json not found and the recipe names no source: "
                        "set source: to a text file or URL, e.g. --source=input.txt")
    if _is_url(source):
        name = Path(urllib.parse.urlsplit(source).path).name or "input.txt"
        path = dataset_dir(recipe) / name
        if not path.exists():
            download(source, path)
        return path
    path = Path(source)
    if not path.exists():
        raise UserError(f"source {source} not found: give an existing text file or an http(s) URL")
    if not path.is_file():
        raise UserError(f"source {source} is not a file: give a text file")
    if path.stat().st_size == 0:
        raise UserError(f"source {source} is empty: give a file with text in it")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def read_chunks(path: str, chunk_chars: int = CHUNK_CHARS):
    """Yield the file's text in pieces of about chunk_chars, cut just before a newline that follows
    a non-space character. Byte-level BPE (GPT-2) never merges across such a cut, so tokenizing the
    pieces gives exactly the ids of tokenizing the whole text; char-level is exact at any cut."""
    rest = ""
    with open(path, encoding="utf-8", newline="") as f:
        while block := f.read(chunk_chars):
            text = rest + block
            cut = _last_cut(text)
            if cut <= 0:
                rest = text
                continue
            yield {"text": text[:cut]}
            rest = text[cut:]
    if rest:
        yield {"text": rest}


def _last_cut(text: str) -> int:
    """Index of the last '\\n' preceded by a non-space character, or -1."""
    i = text.rfind("\n")
    while i > 0:
        if not text[i - 1].isspace():
            return i
        i = text.rfind("\n", 0, i - 1)
    return -1


def corpus_chars(path: Path) -> set[str]:
    chars: set[str] = set()
    with open(path, encoding="utf-8", newline="") as f:
        while block := f.read(CHUNK_CHARS):
            chars.update(block)
    return chars


class Encode:
    """datasets.map function: a batch of text -> token ids (picklable, for num_proc > 1)."""

    def __init__(self, backend):
        self.backend = backend

    def __call__(self, batch):
        return {"ids": [e.ids for e in self.backend.encode_batch_fast(batch["text"], add_special_tokens=False)]}


def build_tokenizer(recipe: Recipe, path: Path):
    name = recipe.data.tokenizer
    if name == "char":
        return char_tokenizer(corpus_chars(path))
    return load_tokenizer(name)


def _unchanged(recipe: Recipe, meta: dict | None, source_sha256: str) -> bool:
    return meta is not None and meta.get("source_sha256") == source_sha256 and all(
        meta.get(k) == getattr(recipe.data, k) for k in SETTINGS)


def prepare(recipe: Recipe, force: bool = False) -> dict:
    """Tokenize the recipe's source into data_dir/dataset/; a no-op when nothing changed."""
    import datasets

    out = dataset_dir(recipe)
    start = time.time()
    path = resolve_source(recipe)
    source_sha256 = sha256_of(path)
    meta = read_meta(out)
    if not force and _unchanged(recipe, meta, source_sha256) and all((out / f).exists() for f in meta["files"].values()):
        print(f"{out} is up to date with {recipe.data.source} (tokenizer {recipe.data.tokenizer}): nothing to do")
        return meta

    tokenizer = build_tokenizer(recipe, path)
    vocab_size = len(tokenizer)
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
    num_proc = recipe.data.num_proc or (min(os.cpu_count() or 1, 8) if path.stat().st_size > BIG_SOURCE else 1)

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out, prefix=".prepare-"))
    try:
        datasets.disable_progress_bars()  # reading the text is quick; the tokenizing bar below is the one to watch
        texts = datasets.Dataset.from_generator(read_chunks, gen_kwargs={"path": str(path)},
                                                cache_dir=str(work / "cache"))
        datasets.enable_progress_bars()
        tokenized = texts.map(Encode(tokenizer.backend_tokenizer), batched=True, batch_size=8, num_proc=num_proc,
                              remove_columns=["text"], cache_file_name=str(work / "ids.arrow"),
                              desc=f"tokenizing {path.name} ({recipe.data.tokenizer})")
        ids = tokenized.data.column("ids")
        total = int(pc.sum(pc.list_value_length(ids)).as_py() or 0)
        n_train = int(total * (1 - recipe.data.val_fraction))
        write_split(ids, work / "train.bin", work / "val.bin", n_train, dtype)

        tok_dir = work / "tokenizer"
        tokenizer.save_pretrained(tok_dir)
        meta = {
            "hfgpt_version": __version__,
            "dataset": recipe.data.dataset,
            "vocab_size": vocab_size,
            "dtype": np.dtype(dtype).name,
            "tokenizer": recipe.data.tokenizer,
            "eot_token_id": eot_id(tokenizer),
            "train_tokens": n_train,
            "val_tokens": total - n_train,
            "files": {"train": "train.bin", "val": "val.bin"},
            "source": recipe.data.source,
            "source_file": path.name,
            "source_bytes": path.stat().st_size,
            "source_sha256": source_sha256,
            "val_fraction": recipe.data.val_fraction,
        }
        (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _publish(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"prepared {out}: {meta['source_bytes']:,} bytes of {path.name} (sha256 {source_sha256[:12]}) became "
          f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens ({meta['dtype']}) with the "
          f"{recipe.data.tokenizer} tokenizer ({vocab_size:,} ids) in {time.time() - start:.1f}s; "
          f"the tokenizer is in {out / 'tokenizer'}.")
    return meta


def write_split(ids, train_path: Path, val_path: Path, n_train: int, dtype) -> None:
    """Stream the token ids (a pyarrow list column, in order) into train then val files."""
    written = 0
    with open(train_path, "wb") as train, open(val_path, "wb") as val:
        for chunk in ids.chunks:
            flat = chunk.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
            split = min(max(n_train - written, 0), len(flat))
            train.write(flat[:split].tobytes())
            val.write(flat[split:].tobytes())
            written += len(flat)


def _publish(work: Path, out: Path) -> None:
    """Move the finished files from the work folder into place; meta.json last, as the commit mark."""
    (out / "meta.json").unlink(missing_ok=True)
    for name in ("train.bin", "val.bin"):
        os.replace(work / name, out / name)
    if (out / "tokenizer").exists():
        shutil.rmtree(out / "tokenizer")
    os.replace(work / "tokenizer", out / "tokenizer")
    os.replace(work / "meta.json", out / "meta.json")


def ensure_prepared(recipe: Recipe) -> dict:
    """The dataset's meta.json, preparing the data first when it is missing or made differently."""
    out = dataset_dir(recipe)
    meta = read_meta(out)
    if recipe.data.source is None:
        if meta is None:
            raise UserError(f"{out}/meta.json not found and the recipe names no source: set source: to your text "
                            f"(a file or URL), or run python -m hfgpt.prepare RECIPE")
        return meta
    if meta is not None and all(meta.get(k) == getattr(recipe.data, k) for k in SETTINGS):
        return meta
    if meta is not None:
        changed = [k for k in SETTINGS if meta.get(k) != getattr(recipe.data, k)]
        print(f"{out} was prepared with other settings ({', '.join(changed)}): preparing it again")
    return prepare(recipe)


@cli
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    recipe = parse_cli(argv, "python -m hfgpt.prepare", "Tokenize the recipe's source into data_dir/dataset/.")
    if recipe is None:
        return 0
    prepare(recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
