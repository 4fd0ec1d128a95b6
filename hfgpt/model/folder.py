"""A model folder: what every saved model is (out_dir, each checkpoint, a converted nanoGPT model).

    write_model_files(model, state_dict, tokenizer, folder, recipe)

config.json, model.safetensors, generation_config.json, the tokenizer files and, for a training
run, recipe.yaml: a folder that `pipeline("text-generation", model=folder)` loads with plain
transformers.
"""

from pathlib import Path

import yaml

from hfgpt.core.files import atomic_write

# torch.compile wraps a model as `_orig_mod`: its state dict names carry this prefix.
COMPILED_PREFIX = "_orig_mod."


def write_model_files(model, state_dict: dict | None, tokenizer, folder: Path, recipe=None) -> None:
    """config, safetensors weights, generation config, tokenizer and recipe.yaml into `folder`.
    A torch.compile'd model's weights are saved under the model's own names, without _orig_mod."""
    if state_dict is not None:
        state_dict = {k.removeprefix(COMPILED_PREFIX): v for k, v in state_dict.items()}
    model = getattr(model, "_orig_mod", model)
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    if recipe is not None:
        atomic_write(Path(folder) / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
