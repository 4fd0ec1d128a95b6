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

