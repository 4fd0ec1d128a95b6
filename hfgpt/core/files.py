"""Files that are whole or absent: written under a temporary name, flushed to disk, renamed.

    atomic_write(path, "text")                    # or bytes
    with atomic_file(path) as f:                  # a binary file object: torch.save(obj, f), fig.savefig(f)
        ...
    with temp_dir(parent, ".prepare-") as work:   # parent/.prepare-<host>-<pid>-XXXX, removed whatever happens
        ...
    sync_tree(folder)                             # flush every file and folder below it before a rename
    replace_dir(new, final)                       # swap a finished folder in, never leaving `final` missing
    remove_tree(folder)                           # delete a folder without ever leaving half of it under its name
    link_or_copy(src, dst)                        # dst: a hard link to src where the file system allows, else a copy
    freed = remove_dead_temp(folder, (".tmp-", ".prepare-"))  # bytes of killed writers' leftovers (only theirs)
    with disk_space(folder, need_bytes, then="run it again"):  # "no space left on device" as a one-line UserError
        ...
    writable_file(Path(options.out), "model.gguf")  # an --out file can be written, checked before the work

Temporary names are unique per writer (a fixed name would let two commands writing the same
file, e.g. `hfgpt.eval` during training, trample each other) and carry the writer's host and
PID, so a later start can tell a dead writer's leftovers from a live one's (owner_alive: a PID
that runs again, as PID 1 does in every restarted container, is told apart by its start time).
What is published here gets the modes the umask gives (as open() and nanoGPT's files have), not
mkstemp's 0600 and mkdtemp's 0700: a dataset or model on a shared machine is readable by others.
"""

import errno
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hfgpt.core.errors import UserError



def owner_tag() -> str:
    """<host>-<pid>: the part of a temporary name that says who writes it."""
    return f"{socket.gethostname().replace('-', '_')}-{os.getpid()}"


def owner_alive(path: Path | str) -> bool | None:
    """Whether the writer named in a temporary path (...<host>-<pid>-... or ...<host>-<pid>.tmp) still
    writes it: None when the name carries no owner or the owner is on another host (then nobody here
    can tell). A process that runs under that PID but started after the entry was last changed is
    not its writer (the PID was reused: PID 1 of a restarted container, or a busy machine's PIDs
    coming round again), so the entry is a dead writer's."""
    path = Path(path)
    host = socket.gethostname().replace("-", "_")
    found = re.search(rf"(?:^|[.-]){re.escape(host)}-(\d+)(?=[-.]|$)", path.name)
    if found is None:
        return None
    pid = int(found[1])
    if not pid_alive(pid):
        return False
    started = process_start(pid)
    try:
        changed = path.lstat().st_ctime  # a rename changes it too: never earlier than the entry's writer began
    except FileNotFoundError:
        return False
    return started is None or started <= changed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs (one of another user's counts: it cannot be signalled,
    but it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch, at most a second early: the kernel's boot
    time is whole seconds), or None when the system does not say."""
    try:
        import psutil  # installed with accelerate

        return psutil.Process(pid).create_time()
    except Exception:  # no psutil, no such process, or not allowed to look
        return None


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask sets it while
    reading it, which another thread could see)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()
FILE_MODE, DIR_MODE = 0o666 & ~UMASK, 0o777 & ~UMASK


def umask_modes(path: Path) -> None:
    """Give `path` the mode open() or mkdir would have given it (FILE_MODE or DIR_MODE)."""
    st = path.lstat()
    want = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE if stat.S_ISREG(st.st_mode) else None
    if want is not None and stat.S_IMODE(st.st_mode) != want:
        os.chmod(path, want)


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
    never points at files a power cut would leave empty; each gets the umask's mode on the way
    (safetensors and transformers' save_pretrained write model.safetensors 0600, mkdtemp 0700)."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            umask_modes(Path(root) / name)
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    for root, dirs, _ in os.walk(folder, topdown=False):
        for name in dirs:
            umask_modes(Path(root) / name)
            fsync_dir(Path(root) / name)
    umask_modes(Path(folder))
    fsync_dir(Path(folder))


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator:
    """A file object for `path` that becomes `path` only when the block ends without an error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{owner_tag()}-", suffix=f"-{path.name}")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 would stay on the file once it is renamed
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
    """parent/<prefix><host>-<pid>-XXXX: a folder of this process on the same file system as parent,
    with the umask's mode (mkdtemp's 0700 would stay on a checkpoint renamed from it)."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{owner_tag()}-"))
    os.chmod(folder, DIR_MODE)
    return folder


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
    else the old one is renamed aside first (a writer killed in between leaves it as .old-<name>-<owner>,
    which remove_dead_temp puts back); the old copy is removed afterwards."""
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


def remove_tree(folder: Path) -> None:
    """Delete `folder` so that a kill midway never leaves half of it under its own name (where a
    half checkpoint would pass for a whole one): it is renamed to a temporary name first, which a
    later start removes (remove_dead_temp) if this process dies while deleting."""
    aside = folder.with_name(f".del-{folder.name}-{owner_tag()}")
    os.replace(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` hold `src`'s bytes: a hard link (no bytes written: one serialization for two folders;
    safe because hfgpt never rewrites a file in place, only replaces it) where the file system has
    them, else a copy (another file system, or none: FAT, some network mounts). Folders: recursively."""
    if src.is_dir():
        dst.mkdir()
        for item in sorted(src.iterdir()):
            link_or_copy(item, dst / item.name)
        return
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
            raise
        shutil.copyfile(src, dst)


def tree_bytes(path: Path) -> int:
    """Bytes of the files at or below `path` (links not followed)."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum((Path(root) / name).lstat().st_size for root, _, files in os.walk(path) for name in files)


def remove_dead_temp(folder: Path, prefixes: tuple[str, ...]) -> int:
    """Remove the entries of `folder` that start with one of `prefixes` and were written by a process
    of this host that no longer runs (owner_alive is False): leftovers of a kill. Live writers' and
    other hosts' temporary files are left alone. An .old-<name>-<host>-<pid> whose <name> is missing
    is a folder that replace_dir had moved aside when its writer was killed: it is put back, not
    removed. Returns the bytes freed."""
    freed = 0
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if entry.name.startswith(prefixes) and owner_alive(entry) is False:
            original = folder / entry.name.removeprefix(".old-").rsplit("-", 2)[0]
            if entry.name.startswith(".old-") and not original.exists():
                os.replace(entry, original)
                continue
            try:
                size = tree_bytes(entry)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except FileNotFoundError:  # removed meanwhile by another start
                continue
            freed += size
    return freed


def is_disk_full(e: BaseException) -> bool:
    """An error that means the file system is full or the quota used up (safetensors reports it as a
    SafetensorError whose message carries the OS error)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return f"os error {errno.ENOSPC})" in text or f"os error {errno.EDQUOT})" in text


def size_text(n: float) -> str:
    """1.2 GB, 340 MB, 12 kB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"
        n /= 1000


RESUME_ADVICE = ("continue with --init_from=resume (a lower keep_last keeps fewer checkpoints); the earlier checkpoints "
                 "are intact")


@contextmanager
def disk_space(folder: Path, need: int | None = None, then: str | Callable[[], str] = RESUME_ADVICE) -> Iterator[None]:
    """Run a save into `folder`; a full disk stops it with one line that names the folder, the space
    the save needs (when known), what is free and what to do once space is freed (`then`, or a
    function that says it when the disk fills). The caller removes its partial files."""
    try:
        yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        sizes = [f"this save needs about {size_text(need)}"] if need else []
        try:
            sizes.append(f"{size_text(shutil.disk_usage(folder).free)} free")
        except OSError:
            pass
        advice = then() if callable(then) else then
        raise UserError(f"no space left on the device of {folder} ({', '.join(sizes) or 'disk full'}): free some space "
                        f"and {advice}") from None


def read_json(path: Path) -> dict:
    """A JSON object file ({} when it is missing, unreadable or not an object)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# --- one writer per folder ----------------------------------------------------------------------


def writable_file(path: Path, example: str) -> Path:
    """Check, before the work that produces it, that a file can be written at `path` (an --out option)."""
    if path.is_dir():
        raise UserError(f"--out={path} is a folder: give a file name, e.g. {path / example}")
    if not path.parent.is_dir():
        raise UserError(f"--out={path}: the folder {path.parent} does not exist: create it or choose another path")
    return path
