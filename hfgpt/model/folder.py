"""A model folder: what every saved model is (out_dir, each checkpoint, a converted nanoGPT model).

    write_model_files(model, state_dict, tokenizer, folder, recipe)
    write_adapter_files(model, state_dict, folder, recipe)      # a LoRA checkpoint: adapter/ + recipe.yaml

config.json, model.safetensors, generation_config.json, the tokenizer files and, for a training
run, recipe.yaml: a folder that `pipeline("text-generation", model=folder)` loads with plain
transformers, 4.x or 5.x. A LoRA model is saved merged (a plain model of the base's class) with
its adapter in folder/adapter/.
"""

from pathlib import Path

import yaml

from hfgpt.core.files import atomic_write
from hfgpt.data.tokenizer import save_tokenizer
from hfgpt.model.gpt import n_positions
from hfgpt.model.lora import ADAPTER, is_lora, merged_weights, save_adapter

# torch.compile wraps a model as `_orig_mod`: its state dict names carry this prefix.
COMPILED_PREFIX = "_orig_mod."


def write_model_files(model, state_dict: dict | None, tokenizer, folder: Path, recipe=None) -> None:
    """config, safetensors weights, generation config, tokenizer and recipe.yaml into `folder`.
    A torch.compile'd model's weights are saved under the model's own names, without _orig_mod;
    the tokenizer's model_max_length is the model's context."""
    if state_dict is not None:
        state_dict = unwrapped_state_dict(state_dict)
    model = getattr(model, "_orig_mod", model)
    if is_lora(model):
        state_dict = state_dict if state_dict is not None else model.state_dict()
        save_adapter(model, Path(folder) / ADAPTER, state_dict)
        state_dict, model = merged_weights(model, state_dict), model.get_base_model()
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    save_tokenizer(tokenizer, folder, n_positions(model))
    write_recipe(folder, recipe)


def write_adapter_files(model, state_dict: dict, folder: Path, recipe) -> None:
    """A LoRA model's adapter alone, in folder/adapter/, and recipe.yaml: what a checkpoint needs
    (MBs), since resume loads the base model from init_from again."""
    save_adapter(getattr(model, "_orig_mod", model), Path(folder) / ADAPTER, unwrapped_state_dict(state_dict))
    write_recipe(folder, recipe)


def write_recipe(folder: Path, recipe) -> None:
    if recipe is not None:
        atomic_write(Path(folder) / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))


def unwrapped_state_dict(state_dict: dict) -> dict:
    """The weights under the model's own names (a torch.compile'd model's carry _orig_mod.)."""
    return {k.removeprefix(COMPILED_PREFIX): v for k, v in state_dict.items()}
