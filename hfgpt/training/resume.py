"""Resuming: which checkpoint a run continues from, checked, and everything it restores.

    folder = resume_point(recipe, accelerator)        # None unless init_from=resume; refuses a changed shape
    state = restore(accelerator, model, optimizer, batches, folder)   # optimizer, scaler, RNG, batches -> LoopState
    set_aside_newer(out_dir, state.iter)              # a rewound run: newer checkpoints are never "latest" again

The newest complete checkpoint is picked by state.json's iteration; one with a broken file
(checkpoint.broken) is passed over, with a note, for the one before. Model weights are loaded by
setup() from the same folder before Accelerate prepares the model.
"""

import json
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from hfgpt.config import Recipe, keys_that_shape
from hfgpt.core.device import set_rng_states
from hfgpt.core.errors import UserError
from hfgpt.core.files import fsync_dir, size_text, tree_bytes
from hfgpt.core.formats import format_of, upgrade_rng
from hfgpt.core.layout import STATE, batches_file, checkpoint_dir, list_checkpoints, read_state, rng_file
from hfgpt.training.budget import restore_plan
from hfgpt.core.tensor_tree import load_tree
from hfgpt.data.batches import random_windows_state
from hfgpt.training.checkpoint import broken
from hfgpt.training.state import LoopState
from hfgpt.training.strategies import load_optimizer_state


def find_checkpoint(recipe: Recipe) -> tuple[Path, dict, list[str]]:
    """The checkpoint to resume: resume_from when given, else the newest complete one in out_dir
    that is readable; with notes on the newer ones that were not (their broken file)."""
    if recipe.train.resume_from:
        folder = Path(recipe.train.resume_from)
        state = read_state(folder)
        why = f"no valid {STATE}" if state is None else broken(folder, state)
        if why:
            raise UserError(f"resume_from={recipe.train.resume_from} cannot be resumed ({why}): give another "
                            f"checkpoint folder, e.g. the newest complete one under {checkpoint_dir(recipe.train.out_dir)}")
        return folder, state, []
    root, skipped = checkpoint_dir(recipe.train.out_dir), []
    for folder, state in reversed(list_checkpoints(recipe.train.out_dir)):
        why = broken(folder, state)
        if why is None:
            return folder, state, [f"warning: {f} cannot be resumed ({w}): resuming {folder.name}, the newest readable "
                                   "checkpoint before it" for f, w in skipped]
        skipped.append((folder, why))
    if skipped:
        raise UserError(f"no checkpoint in {root} can be resumed ({'; '.join(f'{f.name}: {w}' for f, w in skipped)}): "
                        "start over with --overwrite_out_dir=True, or point resume_from at a checkpoint elsewhere")
    raise UserError(f"init_from=resume but {root} has no complete checkpoint: start a new run (without "
                    "init_from=resume; --overwrite_out_dir=True if out_dir holds an earlier one), or point resume_from "
                    "at a checkpoint folder")


def checked_optimizer_state(folder: Path, optimizer) -> dict:
    """The optimizer state saved in `folder`, checked to train as many tensors as `optimizer`."""
    saved = load_tree(folder, "optimizer")
    trained = [len(group["params"]) for group in saved["param_groups"]]
    now = [len(group["params"]) for group in optimizer.param_groups]
    if trained != now:  # torch would raise a ValueError about parameter groups
        raise UserError(f"cannot resume {folder}: its optimizer trained {sum(trained):,} tensors, this run trains "
                        f"{sum(now):,} (written by an hfgpt that still trained a loaded model's biases with bias: false?): "
                        f"start a new run from it with --init_from={folder}")
    return saved


def resume_point(recipe: Recipe, accelerator: Accelerator) -> Path | None:
    """With init_from=resume: the checkpoint folder to continue from, checked against the recipe
    (every process refuses a changed shape; the main one says what else changed, and which newer
    checkpoints were unreadable) and, with a copy of the checkpoints per machine, against the other
    processes' choice."""
    if recipe.model.init_from != "resume":
        return None
    folder, state, notes = find_checkpoint(recipe)
    if accelerator.num_processes > 1:
        found = accelerator.gather(torch.tensor([state["iter"]], device=accelerator.device)).tolist()
        if len(set(found)) > 1:
            where = checkpoint_dir(recipe.train.out_dir)
            raise UserError(f"the processes found different checkpoints to resume in {where} "
                            f"(iterations {', '.join(map(str, found))}, by process): give every machine the same "
                            "checkpoint, or point resume_from at one they all have")
    if recipe.data.tokenizer is None:  # the data goes on with the tokenizer the run was prepared with
        recipe.data.tokenizer = state["recipe"].get("tokenizer")
    if recipe.train.time_budget:  # a budget's plan goes on as it was made
        restore_plan(recipe, state["recipe"])
    message = check_resume(recipe, folder, state)
    if accelerator.is_main_process:
        print("\n".join([*notes, message, *schedule_notes(recipe, state["iter"])]))
    return folder


def schedule_notes(recipe: Recipe, iter_num: int) -> list[str]:
    """What a resume at iter_num will do that may not be meant: nothing (a finished run), or every
    iteration at min_lr (past lr_decay_iters)."""
    o, t = recipe.optim, recipe.train
    if t.eval_only:
        return []
    if iter_num >= t.max_iters:
        return [f"note: iteration {iter_num} already reaches max_iters={t.max_iters}: 0 iterations to train (raise "
                "--max_iters to train on)"]
    if o.decay_lr and iter_num >= o.lr_decay_iters:
        return [f"note: iterations {iter_num + 1}-{t.max_iters} all run at min_lr={o.min_lr:g}: the schedule ended at "
                f"lr_decay_iters={o.lr_decay_iters} (raise it to decay from a higher rate again)"]
    return []


def set_aside_newer(out_dir: str | Path, iter_num: int) -> None:
    """A run that continues from an older checkpoint than the newest abandons the newer ones: they
    move to checkpoints/abandoned-<time>/, where they are never resumed or pruned (delete that
    folder when you no longer want them)."""
    newer = [folder for folder, state in list_checkpoints(out_dir) if state["iter"] > iter_num]
    if not newer:
        return
    aside = checkpoint_dir(out_dir) / f"abandoned-{time.strftime('%Y%m%d-%H%M%S')}"
    while aside.exists():
        aside = aside.with_name(aside.name + "-1")
    aside.mkdir()
    size = sum(tree_bytes(folder) for folder in newer)
    for folder in newer:
        os.replace(folder, aside / folder.name)
    fsync_dir(aside.parent)
    print(f"resuming iteration {iter_num}: set aside the newer checkpoints {', '.join(f.name for f in newer)} of the "
          f"abandoned line in {aside} ({size_text(size)}); they will not be resumed")


def restore(accelerator: Accelerator, model, optimizer, batches, folder: Path) -> LoopState:
    """Load the optimizer, loss scaler, RNG and batches' state of `folder` (the model is loaded
    from the same folder before Accelerate prepares it); returns the run's LoopState."""
    if (folder / "accelerate").is_dir():  # DeepSpeed's (and hfgpt 0.1's FSDP) optimizer state
        accelerator.load_state(folder / "accelerate")
    else:
        load_optimizer_state(accelerator, model, optimizer, lambda: checked_optimizer_state(folder, optimizer))
    if accelerator.scaler is not None and (folder / "scaler.json").exists():
        accelerator.scaler.load_state_dict(json.loads((folder / "scaler.json").read_text()))
    rng_path = folder / rng_file(accelerator.process_index)
    if not rng_path.exists():
        saved = read_state(folder).get("world_size")
        why = (f"the run had {saved} processes" if isinstance(saved, int) and saved <= accelerator.process_index
               else "its rng file is not in this machine's copy")
        print(f"process {accelerator.process_index}: {folder} has no RNG state for it ({why}): this process starts a "
              "fresh random stream, so the run does not continue bitwise")
        return LoopState.from_json(read_state(folder))
    states = load_file(rng_path)
    set_rng_states(states)
    batches.load_state(saved_batches_state(folder, accelerator.process_index, states))
    return LoopState.from_json(read_state(folder))


def saved_batches_state(folder: Path, rank: int, rng: dict) -> dict:
    """Process `rank`'s batches' state (Batches.state()): its batches-<rank>.json. A checkpoint of
    format 0 or 1 has none: its rng-<rank>.safetensors (`rng`) holds the generator tensor instead
    ("batches"; hfgpt 0.1's "sampler"), which becomes the same JSON state here."""
    state = read_state(folder)
    if format_of(state) >= 2:
        return json.loads((folder / batches_file(rank)).read_text())
    return random_windows_state(upgrade_rng(rng, state)["batches"])


def check_resume(recipe: Recipe, folder: Path, state: dict) -> str:
    """Refuse a resume that changes the model's shape or the optimizer; return a line saying what else
    changed (allowed)."""
    saved = {**Recipe().to_dict(), **state["recipe"]}  # keys newer than the checkpoint: their defaults
    current = recipe.to_dict()
    shape = (keys_that_shape("model") + keys_that_shape("optimizer")
             + (keys_that_shape("new_model") if state.get("init_from") == "scratch" else ()))
    wrong = [f"{k}={current[k]} (checkpoint: {saved.get(k)})" for k in shape if saved.get(k) != current[k]]
    if wrong:
        raise UserError(f"cannot resume {folder} with another model shape or optimizer: {', '.join(wrong)}; set these back, "
                        "or start a new run in another out_dir")
    changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in current.items()
               if k not in ("init_from", "resume_from") and saved.get(k) != v]
    return f"resuming {folder} at iteration {state['iter']}" + (f"; changed: {', '.join(changed)}" if changed else "")
