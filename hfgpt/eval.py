"""Evaluate a model on the whole of a split: loss, perplexity and bits per character (or byte).

    hfgpt eval out-shakespeare-char-cpu
    python -m hfgpt.eval out-shakespeare-char-cpu --split=train --stride=32 --batch_size=64
    python -m hfgpt.eval user/shakespeare-char@main --data_dir=data --dataset=shakespeare_char
    python -m hfgpt.eval out-my-model --text=held_out.txt

Every token of the split is scored exactly once, deterministically: windows of block_size tokens
(the model's context) cut the split in order; with --stride=S < block_size the windows overlap
and each scores only its last S tokens, so every token sees at least block_size - S tokens of
context. The summed losses go through an `evaluate` metric module that ships with hfgpt
(hfgpt/evaluation/token_loss), which gives loss (nats per token), perplexity, bits per token and
bits per character (char tokenizer) or per UTF-8 byte (any other). The split's tokens are found
through the run's recipe.yaml (data_dir/dataset) or --data_dir/--dataset; --text scores a text
file tokenized with the model's own tokenizer instead. Results go to eval_results.json in the
model folder (for a Hub id: in the current folder, or --out) and into the folder's model card.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from hfgpt.config import Command, Parsed, command, option


@dataclass
class EvalOptions:
    model: str = option(positional=True)
    """out_dir of a training run, any model folder, or a Hub id (user/name[@revision])."""
    split: str = option("val")
    """The split of the prepared dataset to score."""
    dataset: str | None = option(None)
    """Dataset name under data_dir; None: the run's recipe.yaml."""
    data_dir: str | None = option(None)
    """Folder of prepared datasets; None: the run's recipe.yaml, else data."""
    text: str | None = option(None)
    """Score this text file (tokenized with the model's tokenizer) instead of a split."""
    block_size: int | None = option(None, min=1)
    """Tokens per window; None: the block_size the model was trained with (its recipe.yaml), else its context."""
    stride: int | None = option(None, min=1)
    """Tokens between window starts; less than block_size overlaps the windows, each scoring its last stride
    tokens; None: block_size."""
    batch_size: int | None = option(None, min=1)
    """Windows per forward pass; None: as many as keep the logits near 512 MB, at most 256."""
    device: str = option("auto", choices=("auto", "cpu", "cuda", "mps"))
    """Where to run."""
    out: str | None = option(None)
    """Where to write the results; None: eval_results.json in the model folder, or in the current folder for a Hub id."""


@command(Command("eval", __doc__.split("\n\n")[0], options=EvalOptions))
def main(parsed: Parsed) -> int:
    options = parsed.options
    from hfgpt.core.files import atomic_write, writable_file
    from hfgpt.evaluation.score import evaluate_model, model_folder
    from hfgpt.core.layout import EVAL_RESULTS
    from hfgpt.hub.card import write_card

    if options.out:
        writable_file(Path(options.out), "eval_results.json")  # before evaluating
    folder, own = model_folder(options.model)
    out = Path(options.out) if options.out else (folder if own else Path(".")) / EVAL_RESULTS
    results = evaluate_model(options, folder)
    atomic_write(out, json.dumps(results, indent=2))
    unit = results["unit"]
    print(f"{results['data']}: loss {results['loss']:.4f}, perplexity {results['perplexity']:.3f}, "
          f"{results[f'bits_per_{unit}']:.4f} bits per {'character' if unit == 'char' else 'byte'} over "
          f"{results['tokens']:,} tokens (windows of {results['block_size']}, stride {results['stride']}); wrote {out}")
    if own and out.resolve() == (folder / EVAL_RESULTS).resolve():
        write_card(folder)
        print(f"updated {folder / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
