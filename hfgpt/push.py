"""Push a run to the Hugging Face Hub, once, when it is done (train pushes in the background with push_to_hub).

    hfgpt push out-shakespeare-char-cpu --hub_model_id=user/shakespeare-char
    python -m hfgpt.push out-shakespeare-char-cpu --hub_model_id=user/shakespeare-char --checkpoint --private
    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --push_to_hub=true --hub_model_id=user/shakespeare-char

The repo is created if missing. What goes up is out_dir's model folder (config, weights,
tokenizer, README.md model card, loss.png, recipe.yaml, metrics.jsonl, training.json,
eval_results.json), its tensorboard logs (runs/), and with --checkpoint (hub_strategy: checkpoint)
the newest resumable checkpoint as last-checkpoint/ (resume from it with resume_from=user/name).
Nothing else: never checkpoints/ itself, wandb/, hidden files, other files (named as left out) or a
link out of out_dir. A failed upload is tried again only when another try may pass (no
connection, a timeout, 5xx, 429: huggingface_hub does it), then reported. The token comes from
HF_TOKEN or `hf auth login` and is never printed or written.
See hfgpt.hub.push for how pushes run during training.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from hfgpt.config import Command, Parsed, command, option
from hfgpt.core.errors import UserError


@dataclass
class PushOptions:
    out_dir: str = option(positional=True)
    """The out_dir of a training run (or any model folder)."""
    hub_model_id: str | None = option(None)
    """user/name or org/name; None: the run's hub_model_id, else <your user name>/<out_dir's folder name>."""
    private: bool = option(False)
    """Create the repo private (an existing repo keeps its setting)."""
    checkpoint: bool = option(False)
    """Also push the newest resumable checkpoint as last-checkpoint/ (hub_strategy: checkpoint)."""
    message: str | None = option(None)
    """Commit message; None: 'hfgpt: push <out_dir>'."""


@command(Command("push", __doc__.split("\n\n")[0], options=PushOptions))
def main(parsed: Parsed) -> int:
    options = parsed.options
    import yaml

    from hfgpt.hub.push import Pusher

    out_dir = Path(options.out_dir)
    if not (out_dir / "config.json").is_file():
        raise UserError(f"{out_dir} is not a model folder (no config.json): give the out_dir of a training run")
    recipe_file = out_dir / "recipe.yaml"
    recipe = yaml.safe_load(recipe_file.read_text()) if recipe_file.is_file() else {}
    repo_id = options.hub_model_id or recipe.get("hub_model_id")
    pusher = Pusher(out_dir, repo_id, True if options.private else None, "checkpoint" if options.checkpoint else "end")
    stopped = pusher.finish(options.message or f"hfgpt: push {out_dir.resolve().name}")
    return 128 + stopped if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
