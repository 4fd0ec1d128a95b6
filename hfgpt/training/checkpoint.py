"""Checkpoints: out_dir is a Hugging Face model folder; out_dir/checkpoints/ resumes a run exactly.

    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --init_from=resume
    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --init_from=resume --resume_from=out/checkpoints/iter-000500

Every checkpoint, out_dir/checkpoints/iter-NNNNNN/, is itself a model folder (config.json,
model.safetensors, tokenizer) plus the state of the run:
  optimizer.safetensors, optimizer.json   AdamW's tensors, and the rest of its state as JSON
  rng-<rank>.safetensors                  each process's torch RNG and the batches' position
  scaler.json                             the fp16 loss scaler, when one is used
  state.json                              the run's LoopState (iteration, losses, tokens seen), recipe, hfgpt version
A LoRA run's checkpoint holds its adapter (adapter/) instead of the model: resume loads init_from
again and the adapter onto it (MBs instead of GBs; no tokenizer copy, resume reads the dataset's).
It is written as .tmp-iter-NNNNNN, flushed to disk and renamed when complete, so a kill (or a power
cut) at any moment leaves the earlier checkpoints whole and resume sees complete ones only. Nothing here is a pickle: tensors
go to safetensors, everything else to JSON. (FSDP and DeepSpeed shard the optimizer; with them
the optimizer and RNG go through accelerator.save_state into accelerate/ instead.)
"""

import json
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file

from hfgpt import __version__
from hfgpt.config import Recipe, keys_that_shape
from hfgpt.core.errors import UserError
from hfgpt.core.files import atomic_write, fsync_dir, make_temp_dir, replace_dir, sync_tree
from hfgpt.model.folder import write_adapter_files, write_model_files
from hfgpt.model.lora import is_lora
from hfgpt.training.state import LoopState

STATE = "state.json"
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save_model_folder(accelerator: Accelerator, model, tokenizer, out_dir: str | Path, recipe: Recipe | None) -> None:
    """Write out_dir's model files (called on every process; the main one writes).

    The files go to a temporary folder inside out_dir, are flushed to disk and then moved into
    place one by one, so a crash while writing leaves the previous model files whole."""
    state_dict = accelerator.get_state_dict(model)  # gathers sharded weights: every process takes part
    if not accelerator.is_main_process:
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out, ".saving-")
    try:
        write_model_files(accelerator.unwrap_model(model), state_dict, tokenizer, tmp, recipe)
        sync_tree(tmp)
        for item in sorted(tmp.iterdir()):
            replace_dir(item, out / item.name) if item.is_dir() else os.replace(item, out / item.name)  # adapter/
        fsync_dir(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- optimizer state as safetensors + JSON -------------------------------------------------------

def flatten(obj, tensors: dict, path: str = "t"):
    """Replace every tensor in a nested dict/list/tuple by a reference into `tensors`."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().contiguous().cpu()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten(k, tensors, f"{path}.k{i}"), flatten(v, tensors, f"{path}.{i}")]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    return obj


def unflatten(tree, tensors: dict):
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__dict__" in tree:
            return {unflatten(k, tensors): unflatten(v, tensors) for k, v in tree["__dict__"]}
        if "__tuple__" in tree:
            return tuple(unflatten(v, tensors) for v in tree["__tuple__"])
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    return tree


def save_tree(obj, folder: Path, name: str) -> None:
    tensors: dict = {}
    tree = flatten(obj, tensors)
    save_file(tensors, folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps(tree))


def load_tree(folder: Path, name: str):
    return unflatten(json.loads((folder / f"{name}.json").read_text()), load_file(folder / f"{name}.safetensors"))


# --- saving and finding checkpoints -----------------------------------------------------------

def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def checkpoint_path(out_dir: str | Path, iter_num: int) -> Path:
    return checkpoint_dir(out_dir) / f"iter-{iter_num:06d}"


def rng_state(batches_state: torch.Tensor) -> dict[str, torch.Tensor]:
    states = {"torch": torch.get_rng_state(), "batches": batches_state}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def save_checkpoint(accelerator: Accelerator, model, optimizer, batches, tokenizer, recipe: Recipe,
                    state: LoopState) -> Path:
    """Write out_dir/checkpoints/iter-NNNNNN atomically (called on every process)."""
    final = checkpoint_path(recipe.train.out_dir, state.iter)
    tmp = final.with_name(f".tmp-{final.name}")
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.distributed_type in SHARDED:
        accelerator.save_state(tmp / "accelerate")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if is_lora(getattr(unwrapped, "_orig_mod", unwrapped)):
            write_adapter_files(unwrapped, state_dict, tmp, recipe)
        else:
            write_model_files(unwrapped, state_dict, tokenizer, tmp, recipe)
        if accelerator.distributed_type not in SHARDED:
            save_tree(optimizer.state_dict(), tmp, "optimizer")
        if accelerator.scaler is not None:
            (tmp / "scaler.json").write_text(json.dumps(accelerator.scaler.state_dict()))
    save_file(rng_state(batches.state()), tmp / f"rng-{accelerator.process_index}.safetensors")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        full = {**state.to_json(), "world_size": accelerator.num_processes, "recipe": recipe.to_dict(),
                "hfgpt_version": __version__}
        atomic_write(tmp / STATE, json.dumps(full, indent=2))  # last: its presence marks a whole checkpoint
        replace_dir(tmp, final)
        prune(recipe.train.out_dir, recipe.train.keep_last, keep_best=recipe.train.always_save_checkpoint)
    accelerator.wait_for_everyone()
    return final


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


def prune(out_dir: str | Path, keep_last: int | None, keep_best: bool = True) -> None:
    """Delete all but the newest keep_last complete checkpoints and, with keep_best, the best one
    (always_save_checkpoint: out_dir then holds the latest model, not the best; without it out_dir
    is the best model already); drop leftovers of interrupted writes."""
    root = checkpoint_dir(out_dir)
    for leftover in root.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep_last is None:
        return
    found = list_checkpoints(out_dir)
    keep = {folder for folder, _ in found[-keep_last:]}
    if keep_best and (b := best(out_dir)) is not None:
        keep.add(b[0])
    for folder, _ in found:
        if folder not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def find_checkpoint(recipe: Recipe) -> tuple[Path, dict]:
    """The checkpoint to resume: resume_from when given, else the newest complete one in out_dir."""
    if recipe.train.resume_from:
        folder = Path(recipe.train.resume_from)
        state = read_state(folder)
        if state is None:
            raise UserError(f"resume_from={recipe.train.resume_from} is not a complete hfgpt checkpoint (no valid "
                            f"{STATE}): give a folder under {checkpoint_dir(recipe.train.out_dir)}")
        return folder, state
    found = latest(recipe.train.out_dir)
    if found is None:
        raise UserError(f"init_from=resume but {checkpoint_dir(recipe.train.out_dir)} has no complete checkpoint: "
                        "train without init_from=resume first, or point resume_from at a checkpoint folder")
    return found


def resume_point(recipe: Recipe, accelerator: Accelerator) -> Path | None:
    """With init_from=resume: the checkpoint folder to continue from, checked against the recipe
    (every process refuses a changed shape; the main one says what else changed)."""
    if recipe.model.init_from != "resume":
        return None
    folder, state = find_checkpoint(recipe)
    if recipe.data.tokenizer is None:  # the data goes on with the tokenizer the run was prepared with
        recipe.data.tokenizer = state["recipe"].get("tokenizer")
    message = check_resume(recipe, folder, state)
    if accelerator.is_main_process:
        print(message)
    return folder


def restore(accelerator: Accelerator, optimizer, batches, folder: Path) -> LoopState:
    """Load the optimizer, loss scaler, RNG and batches' state of `folder` (the model is loaded
    from the same folder before Accelerate prepares it); returns the run's LoopState."""
    if accelerator.distributed_type in SHARDED:
        accelerator.load_state(folder / "accelerate")
    else:
        saved = load_tree(folder, "optimizer")
        trained = [len(group["params"]) for group in saved["param_groups"]]
        now = [len(group["params"]) for group in optimizer.param_groups]
        if trained != now:  # torch would raise a ValueError about parameter groups
            raise UserError(f"cannot resume {folder}: its optimizer trained {sum(trained):,} tensors, this run trains "
                            f"{sum(now):,} (written by an hfgpt that still trained a loaded model's biases with bias: false?): "
                            f"start a new run from it with --init_from={folder}")
        optimizer.load_state_dict(saved)
    if accelerator.scaler is not None and (folder / "scaler.json").exists():
        accelerator.scaler.load_state_dict(json.loads((folder / "scaler.json").read_text()))
    rng_file = folder / f"rng-{accelerator.process_index}.safetensors"
    if not rng_file.exists():
        print(f"process {accelerator.process_index}: {folder} has no RNG state for it (the run had fewer "
              "processes): this process starts a fresh random stream")
        return LoopState.from_json(read_state(folder))
    states = load_file(rng_file)
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available():
        cuda = [states[k] for k in sorted(states) if k.startswith("cuda")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    batches.load_state(states["batches"] if "batches" in states else states["sampler"])  # hfgpt 0.1 said sampler
    return LoopState.from_json(read_state(folder))


def check_resume(recipe: Recipe, folder: Path, state: dict) -> str:
    """Refuse a resume that changes the model's shape; return a line saying what else changed (allowed)."""
    saved = {**Recipe().to_dict(), **state["recipe"]}  # keys newer than the checkpoint: their defaults
    current = recipe.to_dict()
    shape = keys_that_shape("model") + (keys_that_shape("new_model") if state.get("init_from") == "scratch" else ())
    wrong = [f"{k}={current[k]} (checkpoint: {saved.get(k)})" for k in shape if saved.get(k) != current[k]]
    if wrong:
        raise UserError(f"cannot resume {folder} with another model shape: {', '.join(wrong)}; set these back, "
                        "or start a new run in another out_dir")
    changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in current.items()
               if k not in ("init_from", "resume_from") and saved.get(k) != v]
    return f"resuming {folder} at iteration {state['iter']}" + (f"; changed: {', '.join(changed)}" if changed else "")
