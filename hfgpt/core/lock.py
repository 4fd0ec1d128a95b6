"""One process at a time in a folder: an flock on folder/.lock, with a record that names the holder.

    with hold_lock(out_dir, "wait for it, or train into another out_dir") as stale:   # out_dir/.lock
        ...            # stale: the record of a killed holder taken over ({} when there was none)
"""

import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hfgpt.core.errors import UserError
from hfgpt.core.files import pid_alive, read_json

try:
    import fcntl
except ImportError:  # Windows: the lock record alone decides
    fcntl = None

LOCK = ".lock"


def holder_text(record: dict) -> str:
    """'pid 4242 on host since 2025-01-02 10:11:12 (python -m hfgpt.train ...)'."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started"])) if "started" in record else "?"
    return (f"pid {record.get('pid', '?')} on {record.get('host', '?')} since {since}"
            + (f" ({record['command']})" if record.get("command") else ""))


def _held_elsewhere(record: dict) -> bool:
    """Without flock: whether the recorded holder may still run (a process of another host cannot be
    checked from here, so it counts as running)."""
    if record.get("host") != socket.gethostname():
        return bool(record)
    try:
        pid = int(record.get("pid", 0))
    except ValueError:
        return False
    return pid_alive(pid) if pid > 0 else True  # a record without a PID cannot be proved stale


@contextmanager
def hold_lock(folder: Path, hint: str) -> Iterator[dict]:
    """Hold folder/.lock while the block runs: one process at a time. The lock is an flock on the
    file (the system releases it when its process dies, however it dies) and the file holds the
    holder's pid, host, start time and command, to name it. A second process raises a UserError
    naming the holder, followed by `hint`. The file is removed when the block ends; one left by a
    killed holder is taken over: the block gets that holder's record ({} when there was none), so the
    caller can say so. Where the file system has no flock, the record alone decides (a dead PID on
    this host is stale)."""
    path = folder / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot create {path} ({e.strerror}): {folder} must be a folder you can write to") from None
        try:
            if fcntl is None:
                raise OSError(errno.ENOLCK, "no flock")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{folder} is in use by another hfgpt process, {holder_text(read_json(path))}: {hint}") from None
        except OSError:  # no flock here (some network file systems)
            if _held_elsewhere(read_json(path)):
                os.close(fd)
                raise UserError(f"{folder} is in use by {holder_text(read_json(path))} (if it is not running any more, "
                                f"delete {path}): {hint}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and our flock: try again
    previous = read_json(path)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join([os.path.basename(sys.orig_argv[0])] + sys.orig_argv[1:])[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    try:
        yield previous
    finally:
        try:
            if read_json(path).get("pid") == os.getpid():
                path.unlink()
        finally:
            os.close(fd)
