"""Batches: random block_size windows from memmapped token files, as nanoGPT's get_batch.

    train = Windows(load_tokens(folder, meta, "train"), block_size=64, batch_size=12, seed=1337)
    x, y = train.next_batch()           # (12, 64) int64 each; y is x shifted left by one token
"""

from pathlib import Path

import numpy as np
import torch

from hfgpt.errors import UserError


def load_tokens(folder: Path, meta: dict, split: str) -> np.ndarray:
    """The split's token ids, memory-mapped (read lazily, never loaded whole)."""
    path = folder / meta["files"][split]
    if not path.exists():
        raise UserError(f"{path} not found: run python -m hfgpt.prepare RECIPE to make it again")
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


class Windows:
    """Random windows of block_size + 1 tokens from one split, drawn from a seeded generator."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int):
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.offsets = np.arange(block_size + 1)
        self._before_last = self.generator.get_state()

    def state(self) -> torch.Tensor:
        """The generator state that draws the most recent batch again: the loop always holds one
        batch it fetched ahead, so a resumed run starts by drawing that batch."""
        return self._before_last

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._before_last = self.generator.get_state()
        starts = torch.randint(len(self.tokens) - self.block_size, (self.batch_size,), generator=self.generator)
        # one fancy-indexed read of (B, T + 1) tokens instead of 2 * B slices
        window = torch.from_numpy(self.tokens[starts.numpy()[:, None] + self.offsets].astype(np.int64))
        return window[:, :-1], window[:, 1:]


def check_split_size(tokens: np.ndarray, split: str, block_size: int, folder: Path) -> None:
    """A split must hold at least one window of block_size + 1 tokens."""
    need = block_size + 1
    if len(tokens) < need:
        raise UserError(
            f"the {split} split of {folder} has {len(tokens):,} tokens, fewer than block_size + 1 = {need:,}: "
            f"add {need - len(tokens):,}+ tokens of text, raise val_fraction, or lower block_size")
