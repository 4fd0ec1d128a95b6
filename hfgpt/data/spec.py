"""What the data stage reads: a recipe's data section and the three values it borrows, built once.

    spec = data_spec(recipe)      # the one place the data stage reads a Recipe
    meta = prepare(spec)          # hfgpt.data.prepare and everything below it take the spec
    spec.folder                   # data_dir/dataset/
    spec.tokenizer                # the tokenizer's resolved name: char, byte, bpe, gpt2, a Hub id or folder

The data stage reads no other section and writes nothing into the recipe: the spec holds a copy
of the data section. Train builds the spec in setup and records the resolved tokenizer in its own
copy of the recipe (recipe.yaml, the card and a later resume name it).
"""

import copy
from dataclasses import dataclass
from pathlib import Path

from hfgpt.config import DataConfig, Recipe, auto_start
from hfgpt.data.meta import read_meta


@dataclass(frozen=True)
class DataSpec:
    """The data section and the values prepare borrows from the model and train sections."""

    data: DataConfig
    """A copy of the recipe's data section, its tokenizer resolved (never None)."""
    block_size: int
    """The model's context: each split must hold one window of block_size + 1 tokens."""
    seed: int
    """train's seed: picks the validation documents of a source of many documents."""

    @property
    def tokenizer(self) -> str:
        return self.data.tokenizer

    @property
    def folder(self) -> Path:
        return Path(self.data.data_dir) / self.data.dataset


def data_spec(recipe: Recipe) -> DataSpec:
    """The recipe's data stage: its data section (copied, the tokenizer resolved), block_size, seed."""
    data = copy.deepcopy(recipe.data)
    data.tokenizer = _tokenizer_name(recipe)
    return DataSpec(data, recipe.model.block_size, recipe.train.seed)


def _tokenizer_name(recipe: Recipe) -> str:
    """The tokenizer the data is prepared with: the recipe's, else the model's own when init_from is
    a model (a Hub id or folder), else char. With init_from=resume, train has set the checkpoint's;
    otherwise the one the dataset was prepared with."""
    name, init_from = recipe.data.tokenizer, auto_start(recipe.model.init_from) or recipe.model.init_from
    if name is not None:
        return name
    if init_from == "resume":
        meta = read_meta(Path(recipe.data.data_dir) / recipe.data.dataset)
        return meta["tokenizer"] if meta else "char"
    return "char" if init_from == "scratch" else init_from
