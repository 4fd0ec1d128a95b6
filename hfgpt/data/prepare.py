"""Prepare: text -> token shards, meta.json and the tokenizer folder, in bounded memory.

    spec = data_spec(recipe)          # hfgpt.data.spec: the data section, block_size, seed, the tokenizer's name
    meta = prepare(spec)              # python -m hfgpt.prepare RECIPE (hfgpt/prepare.py) calls this
    meta = ensure_prepared(spec)      # prepare when missing or made differently, else read meta.json
    with prepared(spec) as meta:      # the same, the folder locked until the block ends: read its files here (train)

Running it again on an unchanged source and recipe does nothing. One prepare at a time writes a
dataset folder (an flock on the folder, waited for at most HFGPT_WAIT_LIMIT seconds), and a train
reads meta.json, the tokenizer and the token files under the same lock, so it never pairs one
preparation's meta.json with another's files. A source that changes while it is read is read
again (its stamp is taken before and compared after). What the folder holds and how
the text is split: hfgpt/prepare.py. The pieces: sources (what `source` names, read as documents),
tokenizer, encode (texts -> ids with threads), shards (token files), meta (meta.json),
nanogpt_data (nanoGPT data folders as they are). They read a DataSpec (hfgpt.data.spec), never
the whole recipe. Everything is written in a temporary folder and moved into place at the end.
"""

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hfgpt.config import keys_that_shape
from hfgpt.config.recipe import shown_section
from hfgpt.core.errors import UserError
from hfgpt.core.files import disk_space, owner_tag, remove_dead_temp, temp_dir
from hfgpt.core.lock import WAIT_LIMIT, duration, folder_lock
from hfgpt.data import nanogpt_data
from hfgpt.data.encode import encoder_for, write_tokens
from hfgpt.data.meta import (META, check_split_size, meta_problem, new_meta, read_meta, shard_problem, stamp_token_files,
                             write_meta)
from hfgpt.data.shards import PREPARING, ShardWriter, move_tail, preparing, publish
from hfgpt.data.sources import Source, is_nanogpt_dir, open_source, stamp_of
from hfgpt.data.spec import DataSpec
from hfgpt.data.tokenizer import (HFGPT_TOKENIZERS, byte_tokenizer, char_tokenizer, document_separators, load_tokenizer,
                                  save_tokenizer, train_bpe)

DRAW_BLOCK = 1 << 16  # documents per seeded block of validation draws when their number is unknown
WAIT = 0.5  # seconds between looks at a folder another prepare is writing
READS = 3  # times a source that changes while it is read is read again before prepare gives up
# What a killed prepare leaves in the dataset folder: its work folder, a meta.json being written,
# the probe of _make_dir, a tokenizer/ set aside by replace_dir (each name carries <host>-<pid>).
LEFTOVERS = (PREPARING, f".{META}.", ".write-test-", ".old-")


def settings(spec: DataSpec, split: str | None) -> dict:
    """The values that the files depend on (the keys that shape the data: meta.json records them as
    saved, URLs without secrets; a change prepares again), with the tokenizer resolved; seed only
    picks documents, vocab_size only sizes bpe."""
    saved = shown_section(spec.data)
    values = {k: saved[k] for k in keys_that_shape("data")}
    if values["tokenizer"] != "bpe":
        del values["vocab_size"]
    if split == "documents":
        values["seed"] = spec.seed
    return values


def _changed(spec: DataSpec, meta: dict) -> list[str]:
    keys = ("source",) if meta.get("split") == "nanogpt" else None
    return [k for k, v in settings(spec, meta.get("split")).items() if (keys is None or k in keys) and meta.get(k) != v]


def _up_to_date(spec: DataSpec, meta: dict | None, source: Source, out: Path) -> bool:
    """Every token file of the size meta.json gives it, the same settings and the same source
    content (files compared by size and mtime, then by sha256)."""
    if meta is None:
        if problem := meta_problem(out):
            print(f"{problem}: preparing {out} again")
        return False
    if problem := shard_problem(out, meta):
        print(f"{problem}: preparing {out} again")
        return False
    if "document_start_ids" not in meta and meta.get("tokenizer") not in HFGPT_TOKENIZERS:
        print(f"{out} was prepared before hfgpt put the tokenizer's own BOS before each document: preparing it again")
        return False
    changed = _changed(spec, meta)
    if changed:
        print(f"{out} was prepared with other settings ({', '.join(changed)}): preparing it again")
        return False
    if source.nanogpt_dir is not None:
        return meta.get("source_stamp") == stamp_of(nanogpt_data.files(source.nanogpt_dir))
    if source.hub or meta.get("source_stamp") == source.stamp():
        return True  # a Hub dataset is not checked again: delete the folder to read a newer revision
    if meta.get("source_sha256") == source.sha256():
        meta["source_stamp"] = source.stamp()
        write_meta(out, meta)
        return True
    print(f"{source.label} changed since {out} was prepared: preparing it again")
    return False


def _make_dir(out: Path) -> bool:
    """Create the dataset folder (True when this call created it), or say why it cannot be written."""
    existed = out.is_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=f".write-test-{owner_tag()}-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to {out} ({e.strerror}): set data_dir to a folder you can write to") from None
    return not existed


def prepare(spec: DataSpec) -> dict:
    """Tokenize the source into data_dir/dataset/; a no-op when nothing changed."""
    if spec.data.source is None:
        raise UserError(f"{spec.folder}/meta.json not found and the recipe names no source: set source: to "
                        "your text (a file, folder, URL or Hub dataset), e.g. --source=input.txt")
    with prepared(spec) as meta:
        return meta


@contextmanager
def prepared(spec: DataSpec) -> Iterator[dict]:
    """The dataset's meta.json, prepared first when it is missing or made differently (with a source)
    or read as it is (without), the dataset folder locked for the block: no other prepare publishes
    there while the caller reads the tokenizer and token files."""
    out = spec.folder
    if spec.data.source is None and not out.is_dir():
        raise _not_prepared(out)
    created = _make_dir(out) if spec.data.source is not None else False
    try:
        with dataset_lock(out):
            yield _prepare(spec, out) if spec.data.source is not None else _existing(spec, out)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def dataset_lock(out: Path):
    """folder_lock on the dataset folder, its waits named after the prepare that holds it."""

    def holder() -> str:
        work = preparing(out)
        return f"the prepare writing it (work folder {work.name})" if work else "another hfgpt process preparing or reading it"

    def gave_up(seconds: float) -> str:
        work = preparing(out)
        clear = f"delete {work} and run again" if work else "run again"
        return (f"waited {duration(seconds)} for {holder()} to finish with {out}: if that process is not running any "
                f"more (a hung prepare), stop it and {clear}; to wait longer, set HFGPT_WAIT_LIMIT=SECONDS")

    return folder_lock(out, lambda: f"waiting for {holder()} to finish with {out}", gave_up)


def _prepare(spec: DataSpec, out: Path) -> dict:
    start = time.time()
    if freed := remove_dead_temp(out, LEFTOVERS):
        size = f"{freed / 1e6:,.1f} MB" if freed >= 100_000 else f"{freed:,} bytes"
        print(f"removed {size} that a stopped prepare left in {out}")
    source = open_source(spec.data, out)
    meta = wait_for_prepare(out)
    if _up_to_date(spec, meta, source, out):
        if meta != read_meta(out):  # token files touched but unchanged: their new times recorded
            write_meta(out, meta)
        print(f"{out} is up to date with {source.label} (tokenizer {spec.tokenizer}): nothing to do")
        return meta
    if source.nanogpt_dir is not None:
        return nanogpt_data.import_dir(spec, source.nanogpt_dir, out)
    need = 4 * source.source_bytes() or None  # at most one uint16 or uint32 id per byte of text
    with temp_dir(out, PREPARING) as work, disk_space(out, need, then="run the prepare again"):
        meta, source = _read_unchanged(spec, source, work, out)
        publish(work, out)
    elapsed = time.time() - start
    tokens = meta["train_tokens"] + meta["val_tokens"]
    print(f"prepared {out}: {source.label} became {meta['train_tokens']:,} train and {meta['val_tokens']:,} val "
          f"tokens ({meta['dtype']}, {sum(len(v) for v in meta['shards'].values())} files) with the "
          f"{meta['tokenizer']} tokenizer ({meta['vocab_size']:,} ids) in {elapsed:.1f}s "
          f"({tokens / max(elapsed, 1e-9):,.0f} tokens/s); the tokenizer is in {out / 'tokenizer'}.")
    return meta


def _read_unchanged(spec: DataSpec, source: Source, work: Path, out: Path) -> tuple[dict, Source]:
    """_tokenize_source into `work`, with the source stamped before and checked after: one that changed
    while it was read (appended to, say) would give a vocabulary of one pass and ids of another, and
    a meta.json that calls the new text prepared. It is read again, READS times at most."""
    for attempt in range(READS):
        before = source.stamp()
        meta = _tokenize_source(spec, source, work, out)
        if source.stamp() == before:
            stamp_token_files(work, meta)
            write_meta(work, meta)
            return meta, source
        print(f"{source.label} changed while it was being read: reading it again")
        for entry in work.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        source = open_source(spec.data, out)
    raise UserError(f"{source.label} changed each of the {READS} times it was read: prepare it once nothing writes to "
                    "it any more (or prepare a copy)")


def _tokenize_source(spec: DataSpec, source: Source, work: Path, out: Path) -> dict:
    """Build the tokenizer, write every split's shards and meta.json into `work`."""
    d = spec.data
    source.load(work / "cache")  # tabular files become Arrow files here; Hub datasets use the HF cache
    split = "contiguous" if source.n_documents == 1 else "documents"
    is_val = val_documents(source.n_documents, d.val_fraction, spec.seed) if split == "documents" else None
    tokenizer = build_tokenizer(spec, source, is_val)
    dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    start, end = document_separators(tokenizer, documents=split == "documents")
    writers = {s: ShardWriter(work, s, dtype, d.shard_size) for s in ("train", "val")}
    documents = write_tokens(source, encoder_for(tokenizer), writers, is_val, start, end, d.num_proc)
    if split == "contiguous":
        total = len(writers["train"])
        move_tail(writers["train"], writers["val"], total - int(total * (1 - d.val_fraction)))
    for name, writer in writers.items():
        share = d.val_fraction if name == "val" else 1 - d.val_fraction
        check_split_size(len(writer), name, spec.block_size, out, share)
    save_tokenizer(tokenizer, work / "tokenizer")
    shards = {name: writer.close() for name, writer in writers.items()}
    meta = new_meta(d.dataset, tokenizer, shards, split, dtype, spec.tokenizer,
                    **({"documents": documents} if split == "documents" else {}), **separator_facts(tokenizer, start, end),
                    **settings(spec, split),
                    source_files=len(source.files), source_bytes=source.source_bytes(),
                    source_sha256=source.sha256(), source_stamp=source.stamp())
    write_meta(work, meta)
    return meta


def separator_facts(tokenizer, start: list[int], end: list[int]) -> dict:
    """meta.json's record of what prepare put around each document: ids and tokens."""
    return {"document_start_ids": start, "document_start": tokenizer.convert_ids_to_tokens(start),
            "document_end_ids": end, "document_end": tokenizer.convert_ids_to_tokens(end)}


def val_documents(n: int | None, fraction: float, seed: int) -> Callable[[int], bool]:
    """Whether document i validates. With n known: exactly round(n * fraction) documents (at least
    one, at most n - 1), a seeded permutation picks them. Unknown n (a stream): each document with
    probability `fraction`, from seeded draws that do not depend on how far the stream is read."""
    if n is not None:
        n_val = min(max(1, round(n * fraction)), n - 1)
        chosen = np.zeros(n, dtype=bool)
        chosen[np.random.default_rng(seed).permutation(n)[:n_val]] = True
        return lambda i: bool(chosen[i])
    blocks: dict[int, np.ndarray] = {}

    def is_val(i: int) -> bool:
        block = i // DRAW_BLOCK
        if block not in blocks:
            blocks.clear()
            blocks[block] = np.random.default_rng([seed, block]).random(DRAW_BLOCK) < fraction
        return bool(blocks[block][i % DRAW_BLOCK])

    return is_val


def build_tokenizer(spec: DataSpec, source: Source, is_val: Callable[[int], bool] | None):
    """char: from every character of the text (nanoGPT's vocabulary); bpe: learned from the training
    split; byte: fixed; anything else loaded by name."""
    name, d = spec.tokenizer, spec.data
    if name == "char":
        chars: set[str] = set()
        for document in source.documents():
            for piece in document:
                chars.update(piece)
        return char_tokenizer(chars)
    if name == "byte":
        return byte_tokenizer()
    if name == "bpe":
        print(f"learning a byte-level BPE of {d.vocab_size:,} ids from the training text")
        return train_bpe(_training_text(source, is_val, d.val_fraction), d.vocab_size)
    return load_tokenizer(name)


def _training_text(source: Source, is_val, val_fraction: float) -> Iterator[str]:
    """The training split's text: its documents, or about the first 1 - val_fraction of one stream."""
    budget = int(source.source_bytes() * (1 - val_fraction)) if is_val is None else None
    for i, document in enumerate(source.documents()):
        if is_val is not None and is_val(i):
            continue
        for piece in document:
            if budget is not None:
                piece = piece[:budget]
                budget -= len(piece)
            if piece:
                yield piece


def wait_for_prepare(out: Path, limit: float | None = None) -> dict | None:
    """The folder's meta.json, after waiting for a prepare that is writing it now without holding the
    folder's lock (an older hfgpt, or a file system without flock), at most `limit` seconds
    (WAIT_LIMIT)."""
    limit, started, said = WAIT_LIMIT if limit is None else limit, time.monotonic(), False
    while (work := preparing(out)) is not None:
        if not said:
            print(f"waiting for the prepare that is writing {out} (its work folder {work.name}) to finish")
            said = True
        if time.monotonic() - started >= limit:
            raise UserError(f"waited {duration(limit)} for the prepare that is writing {out} (its work folder "
                            f"{work}): if it is not running any more, delete that folder and run again; to wait "
                            "longer, set HFGPT_WAIT_LIMIT=SECONDS")
        time.sleep(WAIT)
    return read_meta(out)


def ensure_prepared(spec: DataSpec) -> dict:
    """The dataset's meta.json, preparing the data first when it is missing or made differently."""
    with prepared(spec) as meta:
        return meta


def _existing(spec: DataSpec, out: Path) -> dict:
    """A dataset folder as it is (the recipe names no source): its meta.json, or a nanoGPT folder's."""
    meta = wait_for_prepare(out)
    if meta is not None:
        return meta
    if problem := meta_problem(out):
        raise UserError(f"{problem}: {out} is not a usable dataset; set source: to the text and run python -m "
                        "hfgpt.prepare RECIPE to prepare it again")
    if is_nanogpt_dir(out):
        return nanogpt_data.import_dir(spec, out, out)
    if (out / "tokenizer").is_dir():
        raise UserError(f"{out} holds hfgpt's tokenizer/ but no meta.json: a prepare was stopped before it finished; "
                        "set source: to the text and run python -m hfgpt.prepare RECIPE again")
    raise _not_prepared(out)


def _not_prepared(out: Path) -> UserError:
    return UserError(f"{out}/meta.json not found and the recipe names no source: set source: to your text "
                     f"(a file, folder, URL or Hub dataset), or run python -m hfgpt.prepare RECIPE")
