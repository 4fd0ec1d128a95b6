"""Sources: what a recipe's `source` names, read as documents of text in bounded memory.

    source = open_source(recipe.data, dataset_dir)  # checks every path now (downloads a URL), reads no text
    for document in source.documents():       # in source order
        for piece in document: ...            # str pieces of about 1 MB

`source` is one entry or a list of entries; each entry is
  - a text file (one document), a folder (its files matching `file_glob`, sorted), or a glob;
  - a .jsonl/.json/.csv/.parquet file (one document per row of `text_column`), loaded with
    `datasets.load_dataset` into a temporary cache, or streamed with `streaming: true` (hfgpt.data.tables);
  - an http(s) URL, downloaded once into dataset_dir/downloads/ and then read as a file; a copy the
    user put at dataset_dir/<its file name> is used as is (hfgpt.data.downloads);
  - a Hub dataset id: `datasets.load_dataset(id, source_config, split=source_split, streaming=streaming)`;
  - a nanoGPT data folder (train.bin + val.bin, maybe meta.pkl), used as it is (hfgpt.data.nanogpt_data).
"""

import codecs
import glob
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from hfgpt.config import DataConfig
from hfgpt.config.recipe import shown_urls
from hfgpt.core.errors import UserError
from hfgpt.core.names import is_hub_id, is_url, shown_url
from hfgpt.data.downloads import fetch_url
from hfgpt.data.meta import META, sha256_of
from hfgpt.data.shards import preparing
from hfgpt.data.tables import TABLES, Table

PIECE_CHARS = 1 << 20  # text per piece of a text file; bounds the memory of one tokenizer call


def is_nanogpt_dir(folder: Path) -> bool:
    """train.bin and val.bin as nanoGPT's prepare scripts leave them; not hfgpt's own dataset folder
    caught without its meta.json: while a prepare publishes there (its live work folder is there),
    or after one was stopped midway (hfgpt's tokenizer/ is there, and no nanoGPT meta.pkl)."""
    if not (folder.is_dir() and (folder / "train.bin").is_file() and (folder / "val.bin").is_file()):
        return False
    if (folder / "meta.pkl").exists() or (folder / META).exists():
        return True
    return not (folder / "tokenizer").is_dir() and preparing(folder) is None


def stamp_of(paths: list[Path]) -> str:
    """A hash of the files' paths, sizes and modification times: equal stamps mean nothing changed."""
    h = hashlib.sha256()
    for path in paths:
        st = path.stat()
        h.update(f"{path.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def read_pieces(path: Path, errors: str = "strict", piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """The file's text in pieces of about piece_chars, each cut just before a space or newline that
    follows a non-space character. No GPT-2 pre-token holds a non-space followed by whitespace, so
    byte-level BPE (gpt2, bpe) gives exactly the whole text's ids; char and byte are exact at any
    cut. Text without such a place for 8 pieces in a row is cut anyway, to bound memory.

    Bytes that are not UTF-8 stop with the file and byte offset (errors='strict'), or are replaced
    or dropped as `errors` says."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    rest, offset = "", 0
    with open(path, "rb") as f:
        while True:
            block = f.read(piece_chars)
            held = len(decoder.getstate()[0])  # bytes of a character split by the previous block
            try:
                text = rest + decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise UserError(f"{path} is not UTF-8 at byte {offset - held + e.start:,} ({e.reason}): convert it to "
                                "UTF-8, or set errors: replace (or --errors=replace) to write U+FFFD for such bytes") from None
            offset += len(block)
            if not block:
                break
            cut = _last_cut(text)
            if cut <= 0 and len(text) > 8 * piece_chars:
                cut = len(text)
            if cut <= 0:
                rest = text
                continue
            yield text[:cut]
            rest = text[cut:]
    if text:
        yield text


def _last_cut(text: str) -> int:
    """Index of the last space or newline that follows a non-space character, or -1."""
    i = len(text)
    while i > 0:
        j = max(text.rfind(" ", 0, i), text.rfind("\n", 0, i))
        if j <= 0:
            return -1
        if not text[j - 1].isspace():
            return j
        i = j
    return -1


class TextFiles:
    """Text files, one document each."""

    def __init__(self, paths: list[Path], errors: str):
        self.paths, self.errors = paths, errors
        self.n_documents = len(paths)

    def documents(self) -> Iterator[Iterator[str]]:
        for path in self.paths:
            yield read_pieces(path, self.errors)


class Source:
    """The recipe's source entries, resolved into parts read in order."""

    def __init__(self, parts: list, nanogpt_dir: Path | None = None, label: str = ""):
        self.parts, self.nanogpt_dir = parts, nanogpt_dir
        self.label = label  # what was read, for messages: a URL shows as the local file it was read from

    @property
    def files(self) -> list[Path]:
        return [p for part in self.parts for p in (part.paths or [])]

    @property
    def hub(self) -> bool:
        return any(isinstance(p, Table) and p.paths is None for p in self.parts)

    @property
    def n_documents(self) -> int | None:
        counts = [p.n_documents for p in self.parts]
        return None if None in counts else sum(counts)

    def load(self, cache_dir: Path) -> None:
        for part in self.parts:
            if isinstance(part, Table):
                part.load(cache_dir)

    def documents(self) -> Iterator[Iterator[str]]:
        for part in self.parts:
            yield from part.documents()

    def stamp(self) -> str:
        return stamp_of(self.files)

    def sha256(self) -> str:
        """sha256 of the file's bytes for one file; else of the parts' hashes and names, in order
        (a Hub dataset's hash is of its text as read, so only known after a full read)."""
        files = self.files
        if len(self.parts) == 1 and len(files) == 1:
            return sha256_of(files[0])
        h = hashlib.sha256()
        for part in self.parts:
            if part.paths is None:
                h.update(f"{part.text_sha256.hexdigest()} hub:{part.name}\n".encode())
            for path in part.paths or []:
                h.update(f"{sha256_of(path)} {path}\n".encode())
        return h.hexdigest()

    def source_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def text_bytes(self) -> int | None:
        """Bytes of text to read when the source is text files only (for progress bars), else None."""
        return self.source_bytes() if all(isinstance(p, TextFiles) for p in self.parts) else None


def open_source(data: DataConfig, dataset_dir: Path) -> Source:
    """Resolve every entry of the data section's source, checking that it exists and holds text.

    A URL is downloaded into dataset_dir the first time (dataset_dir must exist and be writable)."""
    entries = data.source if isinstance(data.source, list) else [data.source]
    parts, nanogpt, shown = [], None, []
    for entry in entries:
        entry = str(entry)
        shown.append(entry)
        if is_url(entry):
            path = fetch_url(entry, [str(e) for e in entries if is_url(str(e))], dataset_dir)
            shown[-1] = str(path)
            parts += _file_parts(shown_url(entry), [path], data)
            continue
        path = Path(entry).expanduser()
        if path.is_dir():
            _readable(path)  # before looking inside it
        if is_nanogpt_dir(path):
            nanogpt = path
        elif path.is_dir():
            parts += _file_parts(entry, _folder_files(entry, path, data.file_glob), data)
        elif path.is_file():
            if path.stat().st_size == 0:
                raise UserError(f"source {entry} is empty: give a file with text in it")
            parts += _file_parts(entry, [path], data)
        elif glob.has_magic(entry):
            files = sorted(Path(p) for p in glob.glob(os.path.expanduser(entry), recursive=True) if os.path.isfile(p))
            if not files:
                raise UserError(f"source {entry} matches no files: check the pattern (** matches folders recursively)")
            parts += _file_parts(entry, files, data)
        elif is_hub_id(entry, namespace=False) and Path(entry).suffix.lower() not in (*TABLES, ".txt", ".md"):
            parts.append(Table(entry, data))
        else:
            raise UserError(f"source {entry} not found: give an existing file, folder or glob, an http(s) URL, "
                            "or a Hub dataset id (user/name)")
    if nanogpt is not None and len(entries) > 1:
        raise UserError(f"source {nanogpt} is a nanoGPT data folder (train.bin, val.bin): it is used as it is, "
                        "so it cannot be combined with other sources in a list")
    if nanogpt is None and not any(p.n_documents != 0 for p in parts):
        raise UserError(f"source {shown_urls(data.source)} holds only empty files: give files with text in them")
    return Source(parts, nanogpt, ", ".join(shown))


def _readable(path: Path) -> Path:
    """`path`, or a one-line error when this user may not read it (a folder: nor list it)."""
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        what = "list the folder" if path.is_dir() else "read"
        raise UserError(f"source {path} cannot be read (permission denied: this user may not {what} it): give read "
                        f"access (chmod a+r{'x' if path.is_dir() else ''} {path}) or leave it out of the source")
    return path


def _folder_files(entry: str, folder: Path, patterns: str | list[str]) -> list[Path]:
    _readable(folder)
    patterns = [patterns] if isinstance(patterns, str) else patterns
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise UserError(f"source folder {entry} has no files matching {', '.join(patterns)}: set file_glob to match "
                        "your files, e.g. --file_glob='**/*.md'")
    return files


def _file_parts(entry: str, files: list[Path], data: DataConfig) -> list:
    """Text files become one TextFiles part (empty ones skipped); tabular files one Table per format."""
    parts = []
    files = [_readable(f) for f in files]
    text = [f for f in files if f.suffix.lower() not in TABLES and f.stat().st_size > 0]
    if text:
        parts.append(TextFiles(text, data.errors))
    for fmt in dict.fromkeys(TABLES[f.suffix.lower()] for f in files if f.suffix.lower() in TABLES):
        same = [f for f in files if TABLES.get(f.suffix.lower()) == fmt]
        parts.append(Table(entry if len(files) == 1 else f"{entry} ({fmt} files)", data, same))
    return parts
