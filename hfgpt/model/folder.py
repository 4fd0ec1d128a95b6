"""A model folder: what every saved model is (out_dir, each checkpoint, a converted nanoGPT model).

    write_model_files(model, state_dict, tokenizer, folder, recipe)

config.json, model.safetensors, generation_config.json, the tokenizer files and, for a training
run, recipe.yaml: a folder that `pipeline("text-generation", model=folder)` loads with plain
transformers.
"""

from pathlib import Path

import yaml

from hfgpt.core.files import atomic_write
from hfgpt.model.gpt import causal_lm, own_names


def write_model_files(model, state_dict: dict | None, tokenizer, folder: Path, recipe=None) -> None:
    """config, safetensors weights, generation config, tokenizer and recipe.yaml into `folder`.

    `model` may be wrapped for training (DDP, torch.compile, NextTokenLoss): the causal LM inside
    is saved, its weights under its own names. The caller decides which process writes: with one
    copy of the checkpoints per machine that is not only global rank 0, whom transformers'
    save_pretrained would otherwise pick alone once torch.distributed is initialized."""
    if state_dict is not None:
        state_dict = own_names(model, state_dict)
    model = causal_lm(model)
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    try:
        model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    finally:
        del model.should_save_on_this_rank
    tokenizer.save_pretrained(folder)
    if recipe is not None:
        atomic_write(Path(folder) / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
