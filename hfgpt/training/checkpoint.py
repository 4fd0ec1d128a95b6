"""Checkpoints: out_dir is a Hugging Face model folder; out_dir/checkpoints/ resumes a run exactly.

    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --init_from=resume
    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --init_from=resume --resume_from=out/checkpoints/iter-000500

Every checkpoint, out_dir/checkpoints/iter-NNNNNN/, is itself a model folder (config.json,
model.safetensors, tokenizer) plus the state of the run:
  optimizer.safetensors, optimizer.json   AdamW's tensors, and the rest of its state as JSON
  rng-<rank>.safetensors                  each process's torch RNG
  batches-<rank>.json                     each process's batches' position (Batches.state(): JSON)
  scaler.json                             the fp16 loss scaler, when one is used
  state.json                              the run's LoopState (iteration, losses, tokens seen), recipe, hfgpt version
It is written as .tmp-iter-NNNNNN-<host>-<pid>-XXXX, flushed to disk and swapped in when complete,
so a kill (or a power cut) at any moment leaves the earlier checkpoints whole and resume sees
complete ones only; a full disk stops the run with one line and removes the partial folder.
Resume checks the checkpoint it picks (every safetensors header and size, every JSON file, the
keys of state.json, every process's rng file, the optimizer state's form, the weights' names and
shapes against the model config.json describes) and falls back to the one before when a file is
broken or wrong. A run that resumes an
older checkpoint than the newest sets the newer ones aside (checkpoints/abandoned-<time>/): they are
never "latest" again. Nothing here is a pickle: tensors go to safetensors, everything else to
JSON. FSDP's sharded optimizer state is gathered into the same optimizer.safetensors +
optimizer.json; DeepSpeed's is DeepSpeed's own format (its .pt pickles, through
accelerator.save_state into accelerate/), and the weights saved are DeepSpeed's float32 master
weights, not its bf16/fp16 working copy.

A LoRA run's checkpoint holds its adapter (adapter/) instead of the model: resume loads init_from
again and the adapter onto it (MBs instead of GBs; no tokenizer copy, resume reads the dataset's).

Several machines: with out_dir on a file system they all share, the main process writes each
checkpoint; without one (hfgpt.training.strategies.shared_storage says which, asked once per run)
each machine's first process writes a whole copy on that machine (model and optimizer state are
the same on every process under DDP), each process its rng file beside it, and each machine
resumes from its own copy.
"""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list
from safetensors import safe_open
from safetensors.torch import save_file

from hfgpt import __version__
from hfgpt.config import Recipe
from hfgpt.core.device import rng_states
from hfgpt.core.errors import first_line
from hfgpt.core.files import (RESUME_ADVICE, atomic_write, disk_space, fsync_dir, link_or_copy, make_temp_dir,
                              owner_alive, remove_tree, replace_dir, sync_tree, tree_bytes)
from hfgpt.core.formats import STATE_FORMAT, format_of, too_new
from hfgpt.core.layout import CARD, FACTS, STATE, batches_file, best, checkpoint_path, list_checkpoints, rng_file
from hfgpt.core.tensor_tree import save_tree, tensor_bytes, unflatten
from hfgpt.hub.card import write_card
from hfgpt.model.folder import write_adapter_files, write_model_files
from hfgpt.model.gpt import causal_lm
from hfgpt.model.lora import is_lora
from hfgpt.training.state import LoopState
from hfgpt.training.strategies import model_state_dict, optimizer_state


def save_model_folder(accelerator: Accelerator, model, tokenizer, out_dir: str | Path, recipe: Recipe | None,
                      facts: dict | None = None, files_from: Path | None = None) -> None:
    """Write out_dir's model files (called on every process; the main one writes), or with
    `files_from` (a checkpoint being written: save_checkpoint's model_to, on the main process only)
    take that folder's files as they are, hard-linked: the weights are serialized once for both.
    With `facts` (what the card says of the weights: iteration, losses, samples) also training.json,
    which lists the files this save wrote, and the model card.

    The files go to a temporary folder inside out_dir, are flushed to disk, marked complete, then
    moved into place one by one and the card rendered, so a crash (or a full disk) while writing
    leaves the previous model files whole, and a kill while moving is finished by the next start
    (finish_saves): one save's weights never stay under another's card."""
    # gathers sharded weights: every process takes part
    state_dict = model_state_dict(accelerator, model) if files_from is None else None
    if not accelerator.is_main_process:
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out, ".saving-")
    try:
        size = tensor_bytes(state_dict) if files_from is None else tree_bytes(files_from)
        with disk_space(out, size, then=after_full_disk(out)):
            if files_from is None:
                write_model_files(model, state_dict, tokenizer, tmp, recipe)
            else:
                for item in sorted(files_from.iterdir()):
                    link_or_copy(item, tmp / item.name)
            if facts is not None:
                names = sorted([p.name for p in tmp.iterdir()] + [FACTS, CARD])
                atomic_write(tmp / FACTS, json.dumps({**facts, "files": names}, indent=2))
            sync_tree(tmp)
            atomic_write(tmp / SAVED, "")  # from here on the save is finished forward, never lost halfway
        _move_saved(tmp, out, facts is not None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SAVED = ".complete"  # in a .saving- folder: every file of the save is there and on disk


def _move_saved(tmp: Path, out: Path, card: bool) -> None:
    for item in sorted(tmp.iterdir()):
        if item.name != SAVED:
            replace_dir(item, out / item.name) if item.is_dir() else os.replace(item, out / item.name)  # adapter/
    fsync_dir(out)
    if card:
        write_card(out)  # from the files now in out_dir: training.json, recipe.yaml, config.json, loss.png


def finish_saves(out: Path) -> list[str]:
    """Finish the model saves into out_dir that a killed run had marked complete but not moved into
    place (a .saving- folder with SAVED inside, whose writer is dead); returns their names."""
    done = []
    for tmp in sorted(out.glob(".saving-*")) if out.is_dir() else []:
        if tmp.is_dir() and (tmp / SAVED).is_file() and owner_alive(tmp) is False:
            _move_saved(tmp, out, (out / FACTS).is_file() or (tmp / FACTS).is_file())
            shutil.rmtree(tmp, ignore_errors=True)
            done.append(tmp.name)
    return done


def after_full_disk(out_dir: str | Path) -> Callable[[], str]:
    """What a full disk's message tells to do once space is freed: resume when the run has a
    checkpoint, else start it again (there is none to resume)."""
    def advice() -> str:
        if list_checkpoints(out_dir):
            return RESUME_ADVICE
        return ("start the run again (with --overwrite_out_dir=True, or init_from: auto): it had not saved a checkpoint "
                "yet, so there is none to resume")
    return advice


# --- saving and finding checkpoints -----------------------------------------------------------

def save_checkpoint(accelerator: Accelerator, model, optimizer, batches, tokenizer, recipe: Recipe,
                    state: LoopState, shared: bool = True, model_to: Path | None = None,
                    model_facts: dict | None = None) -> Path:
    """Write out_dir/checkpoints/iter-NNNNNN atomically (called on every process): into the main
    process's temporary folder, swapped in when whole; on a failure (a full disk: one line naming
    the space needed) the temporary folder is removed and the earlier checkpoints stay as they are.
    `shared`: out_dir is on storage every machine sees (else each machine's first process writes
    its own copy, in a folder of the same name on that machine). `model_to` (out_dir; not for LoRA,
    whose checkpoint holds the adapter only): the checkpoint's model files are also saved there
    (save_model_folder, hard links of the same files), before the checkpoint is published."""
    final = checkpoint_path(recipe.train.out_dir, state.iter)
    writer = accelerator.is_main_process if shared else accelerator.is_local_main_process
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    state_dict = model_state_dict(accelerator, model)
    optimizer_dict = None if deepspeed else optimizer_state(accelerator, model, optimizer)
    tmp = [None]
    if accelerator.is_main_process:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = [str(make_temp_dir(final.parent, f".tmp-{final.name}-"))]  # named after its writer: see remove_dead_temp
    if accelerator.num_processes > 1:
        broadcast_object_list(tmp)
    tmp = Path(tmp[0])
    try:
        with disk_space(final.parent, tensor_bytes(state_dict) + tensor_bytes(optimizer_dict),
                        then=after_full_disk(recipe.train.out_dir)):
            if writer:
                tmp.mkdir(parents=True, exist_ok=True)  # made by the main process; on another machine, here
            accelerator.wait_for_everyone()
            if deepspeed:
                accelerator.save_state(tmp / "accelerate")  # DeepSpeed's own format for its partitioned optimizer
                # accelerate pickles each process's RNG there too: rng-<rank>.safetensors holds the same
                (tmp / "accelerate" / f"random_states_{accelerator.process_index}.pkl").unlink(missing_ok=True)
            if writer and is_lora(causal_lm(model)):  # the adapter only: resume loads the base model again
                write_adapter_files(model, state_dict, tmp, recipe)
            elif writer:
                write_model_files(model, state_dict, tokenizer, tmp, recipe)
                if model_to is not None and accelerator.is_main_process:  # the model files only, so far
                    save_model_folder(accelerator, model, tokenizer, model_to, recipe, facts=model_facts, files_from=tmp)
            if writer:
                if optimizer_dict is not None:
                    save_tree(optimizer_dict, tmp, "optimizer")
                if accelerator.scaler is not None:
                    (tmp / "scaler.json").write_text(json.dumps(accelerator.scaler.state_dict()))
            save_file(rng_states(), tmp / rng_file(accelerator.process_index))
            (tmp / batches_file(accelerator.process_index)).write_text(json.dumps(batches.state()))
            accelerator.wait_for_everyone()
            if writer:
                full = {"format": STATE_FORMAT, **state.to_json(), "world_size": accelerator.num_processes, "recipe": recipe.to_dict(),
                        "hfgpt_version": __version__, "storage": "shared" if shared else "per-machine"}
                atomic_write(tmp / STATE, json.dumps(full, indent=2))  # last: its presence marks a whole checkpoint
                replace_dir(tmp, final)
    finally:
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already unless the save failed
    if writer:
        prune(recipe.train.out_dir, recipe.train.keep_last, keep_best=recipe.train.always_save_checkpoint)
    accelerator.wait_for_everyone()
    return final


def prune(out_dir: str | Path, keep_last: int | None, keep_best: bool = True) -> None:
    """Delete all but the newest keep_last complete checkpoints and, with keep_best, the best one
    (always_save_checkpoint: out_dir then holds the latest model, not the best; without it out_dir
    is the best model already). Each is renamed first, so that a kill while deleting never leaves
    half a checkpoint that looks whole."""
    if keep_last is None:
        return
    found = list_checkpoints(out_dir)
    keep = {folder for folder, _ in found[-keep_last:]}
    if keep_best and (b := best(out_dir)) is not None:
        keep.add(b[0])
    for folder, _ in found:
        if folder not in keep:
            remove_tree(folder)


def broken(folder: Path, state: dict) -> str | None:
    """Why a checkpoint whose state.json was read cannot be resumed (the first broken or missing
    file), or None. Reads headers and JSON only: safetensors checks that its file is as long as its
    header says, so a truncated file shows here."""
    if problem := too_new(state, STATE_FORMAT):
        return f"{STATE} {problem}"
    missing = [key for key in ("iter", "recipe") if key not in state]
    if missing or not isinstance(state.get("recipe"), dict):
        return f"{STATE} lacks {', '.join(missing) or 'a valid recipe'}"
    if (folder / "adapter").is_dir():  # a LoRA checkpoint: the adapter instead of the model
        needed = ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
    else:
        needed = ["config.json"] + ([] if (folder / "model.safetensors.index.json").is_file() else ["model.safetensors"])
    needed += [] if (folder / "accelerate").is_dir() else ["optimizer.json", "optimizer.safetensors"]
    for name in needed:
        if not (folder / name).is_file():
            return f"{name} is missing"
    for path in sorted([*folder.glob("*.safetensors"), *folder.glob("adapter/*.safetensors")]):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as e:  # SafetensorError for a truncated or garbled file
            return f"{path.name} is unreadable ({first_line(e)})"
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            return f"{path.name} is not valid JSON ({first_line(e)})"
    if state.get("storage", "shared") == "shared" and isinstance(state.get("world_size"), int):
        names = [rng_file(i) for i in range(state["world_size"])]
        names += [batches_file(i) for i in range(state["world_size"])] if format_of(state) >= 2 else []
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:  # the processes' random streams: without them the run would not continue as it was
            return f"{missing[0]} is missing"
    if not (folder / "accelerate").is_dir() and (problem := _optimizer_problem(folder)):
        return problem
    if not (folder / "adapter").is_dir():
        return _weights_problem(folder)
    return None


def _optimizer_problem(folder: Path) -> str | None:
    """optimizer.json must be an optimizer's state (state, param_groups) whose tensors are all in
    optimizer.safetensors (read from its header)."""
    tree = json.loads((folder / "optimizer.json").read_text(encoding="utf-8"))
    with safe_open(str(folder / "optimizer.safetensors"), framework="pt") as f:
        stored = set(f.keys())
    try:
        saved = unflatten(tree, {name: name for name in stored})
        ok = isinstance(saved, dict) and isinstance(saved.get("state"), dict) and isinstance(saved.get("param_groups"), list) \
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in saved["param_groups"])
    except (KeyError, TypeError, ValueError, AttributeError):
        ok = False
    return None if ok else "optimizer.json is not an optimizer state whose tensors are in optimizer.safetensors"


def _saved_state(model) -> dict:
    """The state dict under the names and shapes save_pretrained writes: transformers 5 reverts its
    load-time conversions when saving (GPT-NeoX's lm_head is written as embed_out, Mixtral's fused
    experts one tensor per expert)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4.x saves the module names as they are
        return model.state_dict()
    return revert_weight_conversion(model, model.state_dict())


def _weights_problem(folder: Path) -> str | None:
    """The weights must be those of the model config.json describes: every tensor of the file a
    parameter of that model, of its shape (the model is built on the meta device: no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as e:  # an edited config.json that no model class accepts
        return f"config.json does not describe a model transformers builds ({first_line(e)})"
    expected = {name: tuple(p.shape) for name, p in _saved_state(model).items()}
    files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else sorted(folder.glob("model-*.safetensors"))
    found = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            found |= {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    tied = {name for name, p in model.named_parameters(remove_duplicate=False)
            if model.get_output_embeddings() is not None and p is model.get_output_embeddings().weight}
    wrong = [n for n, shape in found.items() if expected.get(n) != shape]
    missing = [n for n in expected if n not in found and not (tied and n in tied and tied - {n} <= found.keys())]
    if wrong:
        return (f"model.safetensors holds {wrong[0]} of shape {list(found[wrong[0]])}, which the model of config.json "
                f"{'does not have' if wrong[0] not in expected else f'has as {list(expected[wrong[0]])}'}")
    if missing:
        return f"model.safetensors lacks {missing[0]}, which the model of config.json has"
    return None
