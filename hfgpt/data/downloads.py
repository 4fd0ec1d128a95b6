"""URL sources on disk: each URL downloaded once, whole or not at all, and never written with its secrets.

    path = fetch_url(url, urls_of_the_source, dataset_dir)   # the user's copy, or the download (made now)
    url_copy(url, dataset_dir)    # dataset_dir/downloads/<12 hex digits of sha256(url)>-<file name>
    user_copy(url, urls, dataset_dir)   # dataset_dir/<file name>, where a copy the user puts is used

A download goes to a temporary name (atomic_file: .<name>.<host>-<pid>-XXXX.tmp, so the next run
removes what a killed one left) and is renamed once every byte of its Content-Length came. A
dropped connection or a short answer is tried again, resuming with a Range request where the
server allows; a 4xx answer (but 408 and 429) stops at once. Messages show shown_url(url): no
query string, no user:password@.
"""

import base64
import hashlib
import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from hfgpt.core.errors import UserError, first_line
from hfgpt.core.files import atomic_file, remove_dead_temp
from hfgpt.core.names import is_url, shown_url
from hfgpt.data.meta import META, read_meta
from hfgpt.data.shards import TOKEN_FILE

DOWNLOADS = "downloads"  # URL sources are downloaded into dataset_dir/downloads/
OWN_NAMES = {META, "tokenizer", DOWNLOADS}  # with the token files: what prepare writes in dataset_dir
TRIES = 4  # tries per download
RETRY_WAIT = 1.0  # seconds before the 2nd try; 2x that before the 3rd, 3x before the 4th
TIMEOUT = 60  # seconds without a byte before a connection counts as dropped
BAR_BYTES = 10 << 20  # downloads this large show a progress bar (on a terminal)


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
                while block := response.read1(1 << 20):  # what came so far, not a wait for a whole MB
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
