"""Batches: random block_size windows from memmapped token shards, as nanoGPT's get_batch.

    batches = batches_for(load_tokens(folder, meta, "train"), block_size=64, batch_size=12, seed=1337, rank=0)
    window = batches.next_window()      # (12, 65) int64: block_size + 1 tokens per row
    x, y = to_device(window, device)    # (12, 64) each on the device; y is x shifted left by one token
    x, y = batches.next_batch()         # the same on the CPU
    saved = batches.state()             # a JSON object: {"kind": "random_windows", "seed": ..., "generator": ...}
    batches.load_state(saved)           # draws the same windows again from the last one drawn

batches_for is the one place a run's windows come from: the training loop's (stream="train") and
each loss estimate's (stream="eval"), with their seeds. What the loop asks of its batches is
three methods: next_window() -> (batch_size, block_size + 1) int64 tensor, state() -> a JSON
object (checkpoints write it as batches-<rank>.json), load_state(that object). A loader that
streams a corpus larger than the disk (from the Hub, say) implements the same three, with a
"kind" of its own in its state, and batches_for returns it: the loop, checkpoints and resume
stay as they are.

A split is one file (train.bin) or several shards (train-00000.bin, ...). Windows are drawn
uniformly over all the places a window fits, so each shard is sampled in proportion to its
size, and no window crosses a shard boundary. With one file the draws are nanoGPT's.
"""

import base64
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


EVAL_SEED_STRIDE = 7919  # a prime: the estimate's seeds never meet a training process's seed + rank


def batches_for(tokens: TokenShards | np.ndarray, block_size: int, batch_size: int, seed: int, rank: int = 0,
                stream: str = "train") -> "Batches":
    """The windows process `rank` of a run seeded `seed` reads: stream "train" for the training loop
    (seed + rank: each process its own windows), "eval" for a loss estimate (seed + 7919 * (rank + 1),
    drawn afresh at each estimate, so successive estimates read the same windows)."""
    if stream == "train":
        return Batches(tokens, block_size, batch_size, seed=seed + rank)
    if stream == "eval":
        return Batches(tokens, block_size, batch_size, seed=seed + EVAL_SEED_STRIDE * (rank + 1))
    raise ValueError(f"stream={stream!r}: expected 'train' or 'eval'")


KIND = "random_windows"


def random_windows_state(generator: torch.Tensor, seed: int | None = None) -> dict:
    """Batches' JSON state from a torch generator's state (a uint8 tensor), as base64; `seed` is
    the one it started from (None: not recorded: an older checkpoint held the generator tensor only)."""
    return {"kind": KIND, "seed": seed, "generator": base64.b64encode(generator.numpy().tobytes()).decode("ascii")}


class Batches:
    """Batches of random windows of block_size + 1 tokens from one split, drawn from a seeded generator.

    All randomness comes from self.generator (one per Batches), so state() / load_state() resume
    the same sequence of batches, whatever the number of shards."""

    def __init__(self, tokens: TokenShards | np.ndarray, block_size: int, batch_size: int, seed: int):
        shards = tokens.arrays if isinstance(tokens, TokenShards) else [tokens]
        self.shards = [a for a in shards if len(a) > block_size]  # shards too short for a window are skipped
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.offsets = np.arange(block_size + 1)
        self.ends = np.cumsum([len(a) - block_size for a in self.shards])  # window starts, cumulated per shard
        self.firsts = np.r_[0, self.ends[:-1]]
        self._before_last = self.generator.get_state()

    def state(self) -> dict:
        """A JSON object that draws the most recent batch again (the generator's state before it):
        the loop always holds one batch it fetched ahead, so a resumed run starts by drawing that batch."""
        return random_windows_state(self._before_last, self.seed)

    def load_state(self, state: dict) -> None:
        """Continue from state(): the next window drawn is the one drawn last before it was taken."""
        if not isinstance(state, dict) or state.get("kind") != KIND or not isinstance(state.get("generator"), str):
            kind = state.get("kind") if isinstance(state, dict) else type(state).__name__
            raise UserError(f"the saved batches' state is of kind {kind!r}, not {KIND!r}: resume it with the loader "
                            "that wrote it, or start a new run")
        raw = np.frombuffer(base64.b64decode(state["generator"]), dtype=np.uint8).copy()
        self.generator.set_state(torch.from_numpy(raw))

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
