"""Files that are whole or absent: written under a temporary name, flushed to disk, renamed.

    atomic_write(path, "text")                    # or bytes
    with atomic_file(path) as f:                  # a binary file object: torch.save(obj, f), fig.savefig(f)
        ...
    with temp_dir(parent, ".prepare-") as work:   # parent/.prepare-<host>-<pid>-XXXX, removed whatever happens
        ...
    sync_tree(folder)                             # flush every file and folder below it before a rename
    freed = remove_dead_temp(parent, (".prepare-",))   # bytes of dead writers' leftovers removed

Temporary names are unique per writer (a fixed name would let two commands writing the same
file, e.g. `hfgpt.eval` during training, trample each other) and carry the writer's host and
PID, so a later start can tell a dead writer's leftovers from a live one's (owner_alive).
"""

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def owner_tag() -> str:
    """<host>-<pid>: the part of a temporary name that says who writes it."""
    return f"{socket.gethostname().replace('-', '_')}-{os.getpid()}"


def owner_alive(name: str) -> bool | None:
    """Whether the writer named in a temporary name (...<host>-<pid>-... or ...<host>-<pid>.tmp)
    still runs: None when the name carries no owner or the owner is on another host (then nobody
    here can tell)."""
    host = socket.gethostname().replace("-", "_")
    found = re.search(rf"(?:^|[.-]){re.escape(host)}-(\d+)(?=[-.]|$)", name)
    if found is None:
        return None
    try:
        os.kill(int(found[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file below a folder (links are not followed)."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum(os.lstat(os.path.join(root, name)).st_size for root, _, files in os.walk(path) for name in files)


def remove_dead_temp(folder: Path, prefixes: tuple[str, ...]) -> int:
    """Remove the entries of `folder` whose names start with one of `prefixes` and whose writer
    (owner_alive) is dead: what a killed command left. A live writer's, another host's and a name
    without an owner are kept. Returns the bytes freed."""
    freed = 0
    for entry in Path(folder).iterdir() if Path(folder).is_dir() else []:
        if not entry.name.startswith(prefixes) or owner_alive(entry.name) is not False:
            continue
        try:
            size = size_of(entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another command removed it first
            continue
        freed += size
    return freed


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_tree(folder: Path) -> None:
    """fsync every file below `folder`, then the folders, so that a rename published afterwards
    never points at files a power cut would leave empty."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    for root, dirs, _ in os.walk(folder, topdown=False):
        for name in dirs:
            fsync_dir(Path(root) / name)
    fsync_dir(Path(folder))


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator:
    """A file object for `path` that becomes `path` only when the block ends without an error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{owner_tag()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` through a temporary name: a reader sees the old file or the new one."""
    with atomic_file(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """parent/<prefix><host>-<pid>-XXXX: a private folder on the same file system as parent."""
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{owner_tag()}-"))


@contextmanager
def temp_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """make_temp_dir, removed when the block ends, whatever happens."""
    work = make_temp_dir(parent, prefix)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(new: Path, final: Path) -> None:
    """Put the finished folder `new` at `final`, replacing what is there, with no moment at which
    `final` is missing or partial: the two are swapped in one step where the system can (Linux),
    else the old one is renamed aside first; the old copy is removed afterwards."""
    sync_tree(new)
    if final.exists() and _exchange(new, final):
        fsync_dir(final.parent)
        shutil.rmtree(new, ignore_errors=True)  # now holds the old copy
        return
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{owner_tag()}")
        os.replace(final, old)
    os.replace(new, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
