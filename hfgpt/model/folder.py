"""A model folder: what every saved model is (out_dir, each checkpoint, a converted nanoGPT model).

    write_model_files(model, state_dict, tokenizer, folder, recipe)
    write_adapter_files(model, state_dict, folder, recipe)      # a LoRA checkpoint: adapter/ + recipe.yaml
    check_model_folder("out-run1")                              # a local folder that cannot load: one line, no traceback

config.json, model.safetensors, generation_config.json, the tokenizer files and, for a training
run, recipe.yaml: a folder that `pipeline("text-generation", model=folder)` loads with plain
transformers, 4.x or 5.x. A LoRA model is saved merged (a plain model of the base's class) with
its adapter in folder/adapter/.
"""

import json
from pathlib import Path

import yaml

from hfgpt.core.errors import UserError, first_line
from hfgpt.core.files import atomic_write
from hfgpt.data.tokenizer import save_tokenizer
from hfgpt.model.gpt import causal_lm, n_positions, own_names
from hfgpt.model.lora import ADAPTER, is_lora, merged_weights, save_adapter


def write_model_files(model, state_dict: dict | None, tokenizer, folder: Path, recipe=None) -> None:
    """config, safetensors weights, generation config, tokenizer and recipe.yaml into `folder`.

    `model` may be wrapped for training (DDP, torch.compile, NextTokenLoss): the causal LM inside
    is saved, its weights under its own names; a LoRA model is saved merged (a plain model of the
    base's class), its adapter in folder/adapter/. The tokenizer's model_max_length is the model's
    context. The caller decides which process writes: with one copy of the checkpoints per machine
    that is not only global rank 0, whom transformers' save_pretrained would otherwise pick alone
    once torch.distributed is initialized."""
    if state_dict is not None:
        state_dict = own_names(model, state_dict)
    model = causal_lm(model)
    if is_lora(model):
        state_dict = state_dict if state_dict is not None else model.state_dict()
        save_adapter(model, Path(folder) / ADAPTER, state_dict)
        state_dict, model = merged_weights(model, state_dict), model.get_base_model()
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    try:
        model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    finally:
        del model.should_save_on_this_rank
    save_tokenizer(tokenizer, folder, n_positions(model))
    write_recipe(folder, recipe)


def write_adapter_files(model, state_dict: dict, folder: Path, recipe) -> None:
    """A LoRA model's adapter alone, in folder/adapter/, and recipe.yaml: what a checkpoint needs
    (MBs), since resume loads the base model from init_from again."""
    save_adapter(causal_lm(model), Path(folder) / ADAPTER, own_names(model, state_dict))
    write_recipe(folder, recipe)


def write_recipe(folder: Path, recipe) -> None:
    if recipe is not None:
        atomic_write(Path(folder) / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))



def check_model_folder(name: str) -> None:
    """Refuse, with one line, a local folder given as a model (init_from, sample, eval) that
    transformers would fail on with a traceback: no config.json, one that is not valid JSON or not
    a model's (no model_type), weights that are truncated or unreadable, or a pickle that
    torch's weights_only loader refuses (no code runs: it is never unpickled otherwise). Hub ids
    and adapter folders (adapter_config.json) are left to transformers."""
    folder = Path(name)
    if not folder.is_dir() or (folder / "adapter_config.json").is_file():
        return
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{name} is not a model folder (it has no config.json): give the out_dir of a training run, "
                        "a folder saved with save_pretrained, or a Hub model id")
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{config} is not valid JSON ({first_line(e)}): restore the model folder (e.g. from one of its "
                        "checkpoints) or give another model") from None
    if not isinstance(values, dict) or not isinstance(values.get("model_type"), str):
        what = "names no model_type" if isinstance(values, dict) else "is not a JSON object"
        raise UserError(f"{config} {what}: it is not a transformers model's config; give a model folder")
    for weights in _weight_files(folder):
        if problem := _weights_problem(weights):
            raise UserError(f"{weights} cannot be loaded ({problem}): restore the model folder (e.g. from one of its "
                            "checkpoints) or give another model")


def _weight_files(folder: Path) -> list[Path]:
    """The weight files transformers would load from `folder`: safetensors first, else PyTorch's."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                names = sorted(set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"{folder / index} is not a valid weight index ({first_line(e)}): restore the model "
                                "folder or give another model") from None
            return [folder / n for n in names]
    return []


def _weights_problem(path: Path) -> str | None:
    """Why a weight file cannot be loaded (missing, truncated, not safetensors, a pickle of more than
    tensors), or None. safetensors: its header is read and its length checked; a .bin file goes
    through torch.load(weights_only=True) on a memory map, which builds tensors and plain
    containers only."""
    if not path.is_file():
        return "it is missing"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt"):
                return None
        except Exception as e:  # SafetensorError for a truncated or garbled file
            return first_line(e)
    import torch

    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            torch.load(path, map_location="cpu", weights_only=True)  # the legacy format cannot be memory-mapped
    except Exception as e:  # UnpicklingError for anything but tensors; a truncated zip
        return f"torch.load with weights_only=True refused it: {first_line(e)}"
    return None
