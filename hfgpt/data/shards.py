"""Writing a dataset folder: token shards filled as ids come, in a temporary folder moved into
place when everything is written.

    with temp_dir(out, ".prepare-") as work:   # out/.prepare-<host>-<pid>-XXXX, removed whatever happens
        train = ShardWriter(work, "train", np.uint16, shard_size=100_000_000)
        train.write(ids)                       # any number of times; files fill one after the other
        move_tail(train, val, n_val)           # one text stream: its last n_val tokens become val
        train.close()                          # -> [{"file": "train.bin", "tokens": 1003854}]
        publish(work, out)                     # flushed to disk; token files, tokenizer/, then meta.json

A split that fits in one shard is written as `train.bin` (nanoGPT's name, so nanoGPT reads it);
a larger one as `train-00000.bin`, `train-00001.bin`, ...
"""

import os
import re
from pathlib import Path

import numpy as np

from hfgpt.core.files import fsync_dir, owner_alive, replace_dir, sync_tree

COPY_TOKENS = 1 << 22  # tokens per read when moving a stream's tail into val


class ShardWriter:
    def __init__(self, folder: Path, split: str, dtype, shard_size: int):
        self.folder, self.split, self.dtype, self.shard_size = folder, split, np.dtype(dtype), shard_size
        self.counts: list[int] = []
        self.file = None

    def __len__(self) -> int:
        return sum(self.counts)

    def path(self, index: int) -> Path:
        return self.folder / f"{self.split}-{index:05d}.bin"

    def write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype, copy=False)
        while len(ids):
            if self.file is None or self.counts[-1] == self.shard_size:
                self._next_file()
            room = self.shard_size - self.counts[-1]
            self.file.write(ids[:room].tobytes())
            self.counts[-1] += min(room, len(ids))
            ids = ids[room:]

    def _next_file(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file = open(self.path(len(self.counts)), "wb")
        self.counts.append(0)

    def close(self) -> list[dict]:
        """Finish the files; a single shard is renamed to `split.bin`. Returns meta.json's shard list."""
        if self.file is not None:
            self.file.close()
            self.file = None
        if len(self.counts) == 1:
            os.replace(self.path(0), self.folder / f"{self.split}.bin")
            return [{"file": f"{self.split}.bin", "tokens": self.counts[0]}]
        return [{"file": self.path(i).name, "tokens": n} for i, n in enumerate(self.counts)]


def move_tail(stream: ShardWriter, val: ShardWriter, n_val: int) -> None:
    """Move the last n_val tokens of `stream` (in order) into `val` and cut them off `stream`: one
    text stream split as nanoGPT splits it, in bounded memory. Call before closing either."""
    if stream.file is not None:
        stream.file.close()
        stream.file = None
    if not stream.counts:
        return
    keep, index, first = len(stream) - n_val, 0, 0
    while index < len(stream.counts) - 1 and keep >= first + stream.counts[index]:
        first += stream.counts[index]
        index += 1
    start = keep - first  # the tail begins here in shard `index`
    for i in range(index, len(stream.counts)):
        # plain reads, not a memmap: mapped pages would count as resident memory, as big as the tail
        with open(stream.path(i), "rb") as f:
            f.seek((start if i == index else 0) * stream.dtype.itemsize)
            while len(block := np.fromfile(f, dtype=stream.dtype, count=COPY_TOKENS)):
                val.write(block)
    for i in range(len(stream.counts) - 1, index, -1):
        stream.path(i).unlink()
    os.truncate(stream.path(index), start * stream.dtype.itemsize)
    stream.counts[index + 1:] = []
    stream.counts[index] = start
    if start == 0 and index > 0:  # the tail began exactly at a shard boundary
        stream.path(index).unlink()
        stream.counts.pop()


TOKEN_FILE = re.compile(r"^(train|val)(-\d{5})?\.bin$")
PREPARING = ".prepare-"  # prefix of the temporary folder a prepare writes in (make_temp_dir adds <host>-<pid>)


def preparing(out: Path) -> Path | None:
    """The temporary folder of a prepare that is writing `out` now (its owner alive), or None."""
    return next((p for p in out.glob(f"{PREPARING}*") if owner_alive(p)), None) if out.is_dir() else None


def publish(work: Path, out: Path) -> None:
    """Move the finished files from `work` into `out`; meta.json last, as the commit mark. Token
    files of an earlier preparation that the new one does not have are removed. Everything is
    flushed to disk first, so a power cut never leaves a meta.json beside empty token files."""
    sync_tree(work)
    (out / "meta.json").unlink(missing_ok=True)
    fsync_dir(out)
    new = {p.name for p in work.iterdir() if TOKEN_FILE.match(p.name)}
    if new:
        for old in out.iterdir():
            if TOKEN_FILE.match(old.name) and old.name not in new:
                old.unlink()
    for name in sorted(new):
        os.replace(work / name, out / name)
    replace_dir(work / "tokenizer", out / "tokenizer")
    os.replace(work / "meta.json", out / "meta.json")
    fsync_dir(out)
