"""Benchmarks of hfgpt's steps: training throughput, sampling speed, tokenization throughput, GPU training,
fine-tuning memory.

    python -m hfgpt.bench train recipes/shakespeare_char_cpu.yaml
    python -m hfgpt.bench sample out-shakespeare-char --max_new_tokens=256
    python -m hfgpt.bench prepare recipes/my_dataset.yaml
    python -m hfgpt.bench gpu --nanogpt=../nanoGPT          # a CUDA GPU: hfgpt beside nanoGPT's bench.py
    python -m hfgpt.bench finetune --model=gpt2-medium --block_size=512

Each mode lives in its own module (hfgpt.bench.train, .sample, .prepare, .gpu, .finetune), prints its figures and
writes them as JSON with `report`.
"""

import json
import os
import sys
from pathlib import Path

from hfgpt.core.errors import UserError
from hfgpt.core.files import atomic_write


def report(result: dict, json_path: str | None) -> None:
    """Print `key: value` lines and, when json_path is given, write the result there atomically."""
    for key, value in result.items():
        shown = f"{value:,.2f}" if isinstance(value, float) else value
        print(f"{key}: {shown}")
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(result, indent=2) + "\n")


def child_env(**extra: str) -> dict:
    """The environment for a child process that runs this very hfgpt (not another installed copy)."""
    path = os.pathsep.join(filter(None, [str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def nanogpt_classes(repo: str | Path):
    """GPT and GPTConfig from the model.py of a nanoGPT clone (for the --nanogpt comparisons)."""
    repo = Path(repo)
    if not (repo / "model.py").is_file():
        raise UserError(f"--nanogpt={repo} has no model.py: give the folder of a nanoGPT clone")
    sys.path.insert(0, str(repo))
    try:
        from model import GPT, GPTConfig  # nanoGPT's model.py
    finally:
        sys.path.remove(str(repo))
    return GPT, GPTConfig
