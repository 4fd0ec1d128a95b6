"""Saving: out_dir is a standard Hugging Face model folder at all times.

    save_model_folder(model, tokenizer, out_dir, recipe)   # config, safetensors, tokenizer, recipe.yaml

The files are written into a temporary folder inside out_dir and then moved into place one by
one, so a crash while writing leaves the previous model files whole.
"""

import os
import shutil
import tempfile
from pathlib import Path

import yaml

from hfgpt.config import Recipe


def save_model_folder(model, tokenizer, out_dir: str | Path, recipe: Recipe | None = None) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".saving-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if recipe is not None:
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        for item in sorted(tmp.iterdir()):
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
