"""Sample from a trained model through transformers' text-generation pipeline.

    hfgpt sample out-shakespeare-char-cpu --start="ROMEO:"
    python -m hfgpt.sample out-shakespeare-char --start=FILE:prompt.txt --num_samples=3 --max_new_tokens=1000
    python -m hfgpt.sample user/my-model --temperature=1.0 --top_k=50 --seed=7
    python -m hfgpt.sample user/my-model@v1.0 --num_samples=1        # a branch, tag or commit of a Hub repo

The pipeline generates with the KV cache while the text fits in the model's block_size. Past it,
sampling goes on as nanoGPT's does: each new token sees the last block_size tokens, so any
max_new_tokens works with a model of learned positions (hfgpt.model.generate).
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from hfgpt.config import Command, Parsed, command, option
from hfgpt.core.errors import UserError


@dataclass
class SampleOptions:
    model: str = option(positional=True)
    """out_dir of a training run, any model folder, or a Hub model id (user/name[@revision])."""
    start: str = option("\n")
    """Prompt text, or FILE:path to read it from a file."""
    num_samples: int = option(10, min=1)
    """Samples to draw."""
    max_new_tokens: int = option(500, min=1)
    """Tokens generated per sample."""
    temperature: float = option(0.8, min=0, finite=True)
    """Below 1 less random, above 1 more; 0 is greedy."""
    top_k: int = option(200, min=0)
    """Sample from the k likeliest tokens; 0 for all."""
    seed: int = option(1337, min=0, max=2**32 - 1)
    """Random seed."""
    device: str = option("auto", choices=("auto", "cpu", "cuda", "mps"))
    """Where to run."""


@command(Command("sample", __doc__.split("\n\n")[0], options=SampleOptions))
def main(parsed: Parsed) -> int:
    options = parsed.options
    start = options.start
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise UserError(f"prompt file {path} not found: give --start=FILE:path/to/prompt.txt")
        start = path.read_text(encoding="utf-8")
    from transformers import set_seed

    from hfgpt.model.generate import generate, load_pipeline

    set_seed(options.seed)
    pipe = load_pipeline(options.model, options.device)
    for text in generate(pipe, start, options.num_samples, options.max_new_tokens, options.temperature, options.top_k):
        print(text)
        print("---------------")
    return 0


if __name__ == "__main__":
    sys.exit(main())
