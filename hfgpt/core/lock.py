"""One process at a time in a folder: an flock on folder/.lock, with a record that names the holder;
and an flock on a folder itself, for waits that must end.

    with hold_lock(out_dir, "wait for it, or train into another out_dir") as stale:   # out_dir/.lock
        ...            # stale: the record of a killed holder taken over ({} when there was none)
    with folder_lock(data_dir / dataset, waiting=..., gave_up=...):   # no other prepare writes there meanwhile
        ...

The record never holds a secret: its command line goes through shown_command (URLs without
user:password@ and query, secret-named options as ***). While held, the holder renews the lock
file's time every HEARTBEAT seconds: on storage whose flock is per machine (some NFS and Lustre
mounts), a process on another machine gets the flock too, and tells a live holder there from a
dead one by that renewal.
"""

import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hfgpt.core.errors import UserError
from hfgpt.core.files import pid_alive, process_start, read_json
from hfgpt.core.names import shown_command, shown_text

try:
    import fcntl
except ImportError:  # Windows: the lock record alone decides
    fcntl = None

LOCK = ".lock"
HEARTBEAT = 10.0  # seconds between renewals of a held lock's time
DEAD_AFTER = 600.0  # a lock of another machine not renewed for this long is a dead run's, whatever the clocks say
WAIT = 0.5  # seconds between looks while waiting for a folder
# the longest a command waits for another process to let go of a folder: HFGPT_WAIT_LIMIT seconds
WAIT_LIMIT = float(os.environ.get("HFGPT_WAIT_LIMIT", 2 * 3600))


def duration(seconds: float) -> str:
    """'45 s', '12 min', '2.0 h': how long a wait lasted."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def holder_text(record: dict) -> str:
    """'pid 4242 on host since 2025-01-02 10:11:12 (python -m hfgpt.train ...)', without secrets (a
    record written by an older hfgpt may hold them)."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started"])) if "started" in record else "?"
    return (f"pid {record.get('pid', '?')} on {record.get('host', '?')} since {since}"
            + (f" ({shown_text(str(record['command']))})" if record.get("command") else ""))


def _holder_runs(record: dict) -> bool:
    """Without flock: whether the recorded holder may still run. A process of another host cannot be
    checked from here, so it counts as running; here, a PID that started after the record was written
    is another process (the PID came round again), not the holder."""
    if record.get("host") != socket.gethostname():
        return bool(record)
    try:
        pid = int(record.get("pid", 0))
    except ValueError:
        return False
    if pid <= 0:
        return True  # a record without a PID cannot be proved stale
    started = process_start(pid)
    return pid_alive(pid) and (started is None or started <= float(record.get("started", started)))


def _renewed_elsewhere(path: Path, record: dict) -> bool:
    """The flock was granted but the record names another machine: on storage where flock is per
    machine, that holder may still run. It does if it renews the lock's time within 2.5 heartbeats
    (watched here, so the machines' clocks do not matter); a lock untouched for DEAD_AFTER is dead."""
    if not record or record.get("host") == socket.gethostname():
        return False
    first = path.stat().st_mtime
    if time.time() - first > DEAD_AFTER:
        return False
    print(f"{path} names {holder_text(record)} on another machine: waiting up to {2.5 * HEARTBEAT:.0f}s to see "
          "whether that run still renews it", flush=True)
    deadline = time.monotonic() + 2.5 * HEARTBEAT
    while time.monotonic() < deadline:
        time.sleep(min(WAIT, HEARTBEAT / 4))
        if path.stat().st_mtime != first:
            return True
    return False


def _heartbeat(path: Path, fd: int, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        try:
            os.utime(fd if os.utime in os.supports_fd else path)
        except OSError:
            return


@contextmanager
def hold_lock(folder: Path, hint: str) -> Iterator[dict]:
    """Hold folder/.lock while the block runs: one process at a time. The lock is an flock on the
    file (the system releases it when its process dies, however it dies) and the file holds the
    holder's pid, host, start time and command (without secrets), to name it. A second process
    raises a UserError naming the holder, followed by `hint`. The file is removed when the block
    ends; one left by a killed holder is taken over: the block gets that holder's record ({} when
    there was none), so the caller can say so. Where the file system has no flock, the record alone
    decides (a dead PID on this host, or one that started after the record, is stale)."""
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
            if _holder_runs(read_json(path)):
                os.close(fd)
                raise UserError(f"{folder} is in use by {holder_text(read_json(path))} (if it is not running any more, "
                                f"delete {path}): {hint}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same and _renewed_elsewhere(path, read_json(path)):
            os.close(fd)
            raise UserError(f"{folder} is in use by {holder_text(read_json(path))}, which renews {path} (flock here "
                            f"works per machine; if that run has ended, delete {path}): {hint}")
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and our flock: try again
    previous = read_json(path)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": shown_command([os.path.basename(sys.orig_argv[0])] + sys.orig_argv[1:])[:500]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(path, fd, stop), name="hfgpt-lock", daemon=True).start()
    try:
        yield previous
    finally:
        stop.set()
        try:
            if read_json(path).get("pid") == os.getpid():
                path.unlink()
        finally:
            os.close(fd)


@contextmanager
def folder_lock(folder: Path, waiting: Callable[[], str], gave_up: Callable[[float], str],
                limit: float | None = None) -> Iterator[None]:
    """An exclusive flock on `folder` itself while the block runs (nothing is written, nothing left
    behind): a second process waits for the first, printing waiting() once, and after `limit` seconds
    (WAIT_LIMIT) stops with the UserError gave_up(seconds). A lock dies with its process, so only a
    live holder is waited for. Where flock is missing the block runs unlocked."""
    limit = WAIT_LIMIT if limit is None else limit
    while True:
        fd = os.open(folder, os.O_RDONLY)
        try:
            _wait_for_flock(fd, limit, waiting, gave_up)
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(folder).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the folder was removed (and made again) while we waited: lock the one that is there
    try:
        yield
    finally:
        os.close(fd)  # releases the flock


def _wait_for_flock(fd: int, limit: float, waiting: Callable[[], str], gave_up: Callable[[float], str]) -> None:
    if fcntl is None:
        return
    start, said = time.monotonic(), False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError:  # no flock on this file system
            return
        if not said:
            print(waiting(), flush=True)
            said = True
        if time.monotonic() - start >= limit:
            raise UserError(gave_up(time.monotonic() - start))
        time.sleep(WAIT)
