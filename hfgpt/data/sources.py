"""Sources: what a recipe's `source` names, read as documents of text in bounded memory.

    source = open_source(recipe, dataset_dir)  # checks every path now (downloads a URL), reads no text
    for document in source.documents():       # in source order
        for piece in document: ...            # str pieces of about 1 MB

`source` is one entry or a list of entries; each entry is
  - a text file (one document), a folder (its files matching `file_glob`, sorted), or a glob;
  - a .jsonl/.json/.csv/.parquet file (one document per row of `text_column`), loaded with
    `datasets.load_dataset` into a temporary cache, or streamed with `streaming: true` (hfgpt.tables);
  - an http(s) URL, downloaded once into dataset_dir/downloads/ (url_copy) and then read as a file;
    a copy the user put at dataset_dir/<its file name> is used as is (user_copy);
  - a Hub dataset id: `datasets.load_dataset(id, source_config, split=source_split, streaming=streaming)`;
  - a nanoGPT data folder (train.bin + val.bin, maybe meta.pkl), used as it is (hfgpt.nanogpt).
"""

import base64
import codecs
import glob
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from hfgpt.config import Recipe
from hfgpt.core.errors import UserError, first_line
from hfgpt.core.files import atomic_file, remove_dead_temp
from hfgpt.core.names import is_hub_id, is_url, shown_url
from hfgpt.data.meta import META, read_meta
from hfgpt.data.shards import TOKEN_FILE, preparing
from hfgpt.data.tables import TABLES, Table

PIECE_CHARS = 1 << 20  # text per piece of a text file; bounds the memory of one tokenizer call
DOWNLOADS = "downloads"  # URL sources are downloaded into dataset_dir/downloads/
OWN_NAMES = {META, "tokenizer", DOWNLOADS}  # with the token files: what prepare writes in dataset_dir
TRIES = 4  # tries per download
RETRY_WAIT = 1.0  # seconds before the 2nd try; 2x before the 3rd, ...
TIMEOUT = 60  # seconds without a byte before a connection counts as dropped
BAR_BYTES = 10 << 20  # downloads this large show a progress bar (on a terminal)


def is_nanogpt_dir(folder: Path) -> bool:
    """train.bin and val.bin as nanoGPT's prepare scripts leave them; not hfgpt's own dataset folder
    caught without its meta.json: while a prepare publishes there (its live work folder is there),
    or after one was stopped midway (hfgpt's tokenizer/ is there, and no nanoGPT meta.pkl)."""
    if not (folder.is_dir() and (folder / "train.bin").is_file() and (folder / "val.bin").is_file()):
        return False
    if (folder / "meta.pkl").exists() or (folder / META).exists():
        return True
    return not (folder / "tokenizer").is_dir() and preparing(folder) is None


def download(url: str, dest: Path, by_hand: Path) -> None:
    """Fetch `url` into `dest` through a temporary name, renamed only when every byte the server
    announced (Content-Length) has come, so a broken download leaves nothing. A dropped connection
    or a short answer is tried again (TRIES in all), resuming where it stopped when the server
    accepts Range requests; a 4xx answer (but 408 and 429) fails at once. A progress bar shows on a
    terminal for files of BAR_BYTES or more. Only shown_url(url) is ever printed: the query string
    and user:password@ stay secret."""
    shown, made = shown_url(url), not dest.parent.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {shown} -> {dest}")
    try:
        _download(url, dest, by_hand, shown)
    except BaseException:
        if made and not any(dest.parent.iterdir()):
            dest.parent.rmdir()
        raise


def _download(url: str, dest: Path, by_hand: Path, shown: str) -> None:
    with atomic_file(dest) as f:  # dest.parent/.<name>.<host>-<pid>-XXXX.tmp until whole
        for attempt in range(1, TRIES + 1):
            try:
                problem = _fetch(url, f, dest.name)
            except urllib.error.HTTPError as e:
                problem = f"HTTP {e.code} {e.reason}"
                if e.code < 500 and e.code not in (408, 429):
                    break  # asking again gets the same answer
            except OSError as e:  # no connection
                problem = str(e.reason if isinstance(e, urllib.error.URLError) else first_line(e)).replace(url, shown)
            if problem is None:
                return
            if attempt < TRIES:
                print(f"download of {shown}: {problem}; trying again ({attempt + 1} of {TRIES})")
                time.sleep(RETRY_WAIT * attempt)
        raise UserError(f"could not download {shown} ({problem}): check the URL, or download it yourself to "
                        f"{by_hand} and run again")


def _fetch(url: str, f, name: str) -> str | None:
    """Append the rest of `url` to the open file `f` (from f.tell(), with a Range request when that
    is not 0). None when the file is whole, else what went wrong (the bytes received stay in `f`)."""
    have, parts = f.tell(), urllib.parse.urlsplit(url)
    headers = {"Range": f"bytes={have}-"} if have else {}
    if parts.username is not None:  # https://user:password@host/...: HTTP basic authentication
        login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        if have and response.status != 206:  # the server ignores Range: it sends everything again
            f.seek(0)
            f.truncate()
            have = 0
        size = response.headers.get("Content-Length", "")
        total = have + int(size) if size.isdigit() else None
        with tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=name,
                  disable=None if total and total >= BAR_BYTES else True) as bar:
            try:
                while block := response.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:  # the connection dropped midway
                return f"the connection broke after {f.tell():,} bytes ({first_line(e)})"
    if total is not None and f.tell() != total:
        return f"the server sent {f.tell():,} of its {total:,} bytes"
    return None


def url_name(url: str) -> str:
    """The file name at the end of a URL's path ('' for none)."""
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name


def url_copy(url: str, dataset_dir: Path) -> Path:
    """Where a URL is downloaded: dataset_dir/downloads/<12 hex digits of sha256(url)>-<name>, so
    two URLs with the same file name are two files, a changed URL downloads again, and no URL's
    name can collide with prepare's own files. The hash is of the whole URL (a presigned URL's
    query may select the content); the query itself is never written."""
    name = url_name(url) or "input.txt"
    return dataset_dir / DOWNLOADS / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name[-120:]}"


def user_copy(url: str, urls: list[str], dataset_dir: Path) -> Path | None:
    """dataset_dir/<the URL's file name>: where a copy the user puts is used as is (nanoGPT's way,
    and how offline machines run the shipped recipes). None when that name cannot be the URL's
    alone: another URL of the source has the same name, the name is one of prepare's own files,
    or the folder's meta.json says it was prepared from another URL (a copy an older hfgpt
    downloaded for that one)."""
    name = url_name(url)
    if not name or name.startswith(".") or name in OWN_NAMES or TOKEN_FILE.match(name) \
            or [url_name(u) for u in urls].count(name) > 1:
        return None
    recorded = (read_meta(dataset_dir) or {}).get("source")
    recorded = {shown_url(r) for r in (recorded if isinstance(recorded, list) else [recorded]) if r and is_url(r)}
    return dataset_dir / name if not recorded or shown_url(url) in recorded else None


def fetch_url(url: str, urls: list[str], dataset_dir: Path) -> Path:
    """The local file of a URL source: the user's copy when there is one, else its download (made
    now when missing; what a killed download left is removed first)."""
    mine = user_copy(url, urls, dataset_dir)
    if mine is not None and mine.is_file():
        return mine
    path = url_copy(url, dataset_dir)
    if path.parent.is_dir():
        remove_dead_temp(path.parent, (".",))
    if not path.exists():
        download(url, path, by_hand=mine or path)
    return path


def stamp_of(paths: list[Path]) -> str:
    """A hash of the files' paths, sizes and modification times: equal stamps mean nothing changed."""
    h = hashlib.sha256()
    for path in paths:
        st = path.stat()
        h.update(f"{path.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
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


def open_source(recipe: Recipe, dataset_dir: Path) -> Source:
    """Resolve every entry of the recipe's source, checking that it exists and holds text.

    A URL is downloaded into dataset_dir the first time (dataset_dir must exist and be writable)."""
    entries = recipe.data.source if isinstance(recipe.data.source, list) else [recipe.data.source]
    parts, nanogpt, shown = [], None, []
    for entry in entries:
        entry = str(entry)
        shown.append(entry)
        if is_url(entry):
            path = fetch_url(entry, [str(e) for e in entries if is_url(str(e))], dataset_dir)
            shown[-1] = str(path)
            parts += _file_parts(shown_url(entry), [path], recipe)
            continue
        path = Path(entry).expanduser()
        if is_nanogpt_dir(path):
            nanogpt = path
        elif path.is_dir():
            parts += _file_parts(entry, _folder_files(entry, path, recipe.data.file_glob), recipe)
        elif path.is_file():
            if path.stat().st_size == 0:
                raise UserError(f"source {entry} is empty: give a file with text in it")
            parts += _file_parts(entry, [path], recipe)
        elif glob.has_magic(entry):
            files = sorted(Path(p) for p in glob.glob(os.path.expanduser(entry), recursive=True) if os.path.isfile(p))
            if not files:
                raise UserError(f"source {entry} matches no files: check the pattern (** matches folders recursively)")
            parts += _file_parts(entry, files, recipe)
        elif is_hub_id(entry, namespace=False) and Path(entry).suffix.lower() not in (*TABLES, ".txt", ".md"):
            parts.append(Table(entry, recipe))
        else:
            raise UserError(f"source {entry} not found: give an existing file, folder or glob, an http(s) URL, "
                            "or a Hub dataset id (user/name)")
    if nanogpt is not None and len(entries) > 1:
        raise UserError(f"source {nanogpt} is a nanoGPT data folder (train.bin, val.bin): it is used as it is, "
                        "so it cannot be combined with other sources in a list")
    if nanogpt is None and not any(p.n_documents != 0 for p in parts):
        raise UserError(f"source {recipe.to_dict()['source']} holds only empty files: give files with text in them")
    return Source(parts, nanogpt, ", ".join(shown))


def _folder_files(entry: str, folder: Path, patterns: str | list[str]) -> list[Path]:
    patterns = [patterns] if isinstance(patterns, str) else patterns
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise UserError(f"source folder {entry} has no files matching {', '.join(patterns)}: set file_glob to match "
                        "your files, e.g. --file_glob='**/*.md'")
    return files


def _file_parts(entry: str, files: list[Path], recipe: Recipe) -> list:
    """Text files become one TextFiles part (empty ones skipped); tabular files one Table per format."""
    parts = []
    text = [f for f in files if f.suffix.lower() not in TABLES and f.stat().st_size > 0]
    if text:
        parts.append(TextFiles(text, recipe.data.errors))
    for fmt in dict.fromkeys(TABLES[f.suffix.lower()] for f in files if f.suffix.lower() in TABLES):
        same = [f for f in files if TABLES.get(f.suffix.lower()) == fmt]
        parts.append(Table(entry if len(files) == 1 else f"{entry} ({fmt} files)", recipe, same))
    return parts
