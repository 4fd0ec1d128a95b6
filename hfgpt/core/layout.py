"""A run's folder, out_dir: the names of what hfgpt writes there, and where its checkpoints are.

    out_dir/
      config.json, model.safetensors, tokenizer.json, ...   MODEL_FILES, SHARDS: a Hugging Face model folder
      recipe.yaml, training.json, eval_results.json         RECIPE, FACTS, EVAL_RESULTS (in MODEL_FILES too)
      README.md, loss.png, metrics.jsonl                    CARD, PLOT, METRICS: RUN_FILES
      adapter/                                              a LoRA run's adapter (hfgpt.model.lora.ADAPTER)
      checkpoints/iter-NNNNNN/state.json, ...               checkpoint_path(out_dir, n); STATE
      last-checkpoint/                                      on the Hub only: a pushed run's newest checkpoint

    folder, state = latest(out_dir)    # the newest complete checkpoint and its state.json, or None

Training writes this layout (hfgpt.training.checkpoint, hfgpt.training.out_dir) and the Hub code
reads it (hfgpt.hub.push, hfgpt.hub.download): it lives down here so that neither reaches into the
other. A checkpoint is complete when its state.json reads and names an iteration; checkpoints are
ordered by that iteration, not by their folder names.
"""

import json
from pathlib import Path

CARD = "README.md"
FACTS = "training.json"  # what the card says of the weights, and the files the save wrote
EVAL_RESULTS = "eval_results.json"
PLOT = "loss.png"
METRICS = "metrics.jsonl"
RECIPE = "recipe.yaml"
STATE = "state.json"  # in a checkpoint: the run's LoopState, recipe and hfgpt version
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last-checkpoint"

# The model folder's files: transformers' save_pretrained, the tokenizers' own file names
# (vocab.txt: WordPiece's), and what hfgpt adds to make the folder a run's result.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja")
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               *TOKENIZER_FILES, RECIPE, FACTS, EVAL_RESULTS)
SHARDS = "model-*-of-*.safetensors"  # a model saved in several files
RUN_FILES = (CARD, PLOT, METRICS)  # the run's card, plot and log beside the model

# Names being written: atomic files and checkpoints (.tmp-), model saves (.saving-), folders being
# replaced or deleted (.old-, .del-), snapshots being pushed (.push-, hfgpt.hub.push).
SNAPSHOT_PREFIX = ".push-"
TEMP_PREFIXES = (".tmp-", ".saving-", ".old-", ".del-", SNAPSHOT_PREFIX)


def rng_file(rank: int) -> str:
    """A checkpoint's file of process `rank`'s torch RNG states."""
    return f"rng-{rank}.safetensors"


def batches_file(rank: int) -> str:
    """A checkpoint's file of process `rank`'s batches' state (state format 2 on; before: in its rng file)."""
    return f"batches-{rank}.json"


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINTS


def checkpoint_path(out_dir: str | Path, iter_num: int) -> Path:
    return checkpoint_dir(out_dir) / f"iter-{iter_num:06d}"


def read_state(folder: Path) -> dict | None:
    """The checkpoint's state.json, or None when the checkpoint is incomplete."""
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("iter"), int) else None


def list_checkpoints(out_dir: str | Path) -> list[tuple[Path, dict]]:
    """Complete checkpoints, oldest first (by the iteration in state.json, not the folder name)."""
    root = checkpoint_dir(out_dir)
    found = []
    for folder in root.iterdir() if root.is_dir() else []:
        state = read_state(folder) if folder.is_dir() and not folder.name.startswith(".") else None
        if state is not None:
            found.append((folder, state))
    return sorted(found, key=lambda item: item[1]["iter"])


def latest(out_dir: str | Path) -> tuple[Path, dict] | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def best(out_dir: str | Path) -> tuple[Path, dict] | None:
    found = [item for item in list_checkpoints(out_dir) if item[1].get("val_loss") is not None]
    return min(found, key=lambda item: item[1]["val_loss"]) if found else None
