"""Batches: random block_size windows from memmapped token shards, as nanoGPT's get_batch.

    batches = Batches(load_tokens(folder, meta, "train"), block_size=64, batch_size=12, seed=1337)
    window = batches.next_window()      # (12, 65) int64: block_size + 1 tokens per row
    x, y = to_device(window, device)    # (12, 64) each on the device; y is x shifted left by one token
    x, y = batches.next_batch()         # the same on the CPU

A split is one file (train.bin) or several shards (train-00000.bin, ...). Windows are drawn
uniformly over all the places a window fits, so each shard is sampled in proportion to its
size, and no window crosses a shard boundary. With one file the draws are nanoGPT's.
"""

from pathlib import Path

import numpy as np
import torch

from hfgpt.core.errors import UserError
from hfgpt.data.meta import check_split_size, entry_problem


class TokenShards:
    """A split's token files, memory-mapped (read lazily, never loaded whole)."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return sum(len(a) for a in self.arrays)

    def longest(self) -> int:
        return max((len(a) for a in self.arrays), default=0)


def load_tokens(folder: Path, meta: dict, split: str, block_size: int | None = None) -> TokenShards:
    """The split's shards as listed in meta.json, each checked to be as meta.json lists it (its size;
    its content when its time changed); with block_size, checked to hold a training window."""
    arrays = []
    for entry in meta["shards"][split]:
        path = folder / entry["file"]
        if problem := entry_problem(folder, entry, meta["dtype"]):
            raise UserError(f"{problem}: run python -m hfgpt.prepare RECIPE (with its source) to make {folder} again")
        arrays.append(np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r"))
    tokens = TokenShards(arrays)
    if block_size is not None:
        check_split_size(tokens.longest(), split, block_size, folder)
    return tokens


class Batches:
    """Batches of random windows of block_size + 1 tokens from one split, drawn from a seeded generator.

    All randomness comes from self.generator (one per Batches), so state() / load_state() resume
    the same sequence of batches, whatever the number of shards."""

    def __init__(self, tokens: TokenShards | np.ndarray, block_size: int, batch_size: int, seed: int):
        shards = tokens.arrays if isinstance(tokens, TokenShards) else [tokens]
        self.shards = [a for a in shards if len(a) > block_size]  # shards too short for a window are skipped
        self.block_size, self.batch_size = block_size, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.offsets = np.arange(block_size + 1)
        self.ends = np.cumsum([len(a) - block_size for a in self.shards])  # window starts, cumulated per shard
        self.firsts = np.r_[0, self.ends[:-1]]
        self._before_last = self.generator.get_state()

    def state(self) -> torch.Tensor:
        """The generator state that draws the most recent batch again: the loop always holds one
        batch it fetched ahead, so a resumed run starts by drawing that batch."""
        return self._before_last

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.next_window()
        return window[:, :-1], window[:, 1:]

    def next_window(self) -> torch.Tensor:
        """(batch_size, block_size + 1) tokens, contiguous: a batch's inputs and targets in one tensor."""
        self._before_last = self.generator.get_state()
        starts = torch.randint(int(self.ends[-1]), (self.batch_size,), generator=self.generator).numpy()
        if len(self.shards) == 1:
            # one fancy-indexed read of (B, T + 1) tokens instead of 2 * B slices
            window = self.shards[0][starts[:, None] + self.offsets]
        else:
            shard = np.searchsorted(self.ends, starts, side="right")
            local = starts - self.firsts[shard]
            window = np.stack([self.shards[s][i:i + self.block_size + 1] for s, i in zip(shard, local)])
        return torch.from_numpy(window.astype(np.int64))


def to_device(window: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, T + 1) window -> (x, y) on the device, y[:, t] = x[:, t + 1]: views of one copy.

    On CUDA the window is pinned once and copied once, asynchronously, so the copy overlaps the
    device's work. Slicing x and y on the host first would pin two strided views, which keep their
    strides (and gaps) in pinned memory, and a strided host-to-device copy goes through a
    contiguous temporary in ordinary pageable memory: no overlap, and every token crossing twice."""
    window = window.contiguous()
    if device.type == "cuda":
        window = window.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        window = window.to(device)
    return window[:, :-1], window[:, 1:]
