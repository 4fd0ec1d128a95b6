"""Trackers named by the recipe's log_with, through Accelerate's tracker API.

    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --log_with=tensorboard
    WANDB_MODE=offline python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --log_with=tensorboard,wandb
    tensorboard --logdir out-shakespeare-char-cpu/runs

train passes tracker_options() to its Accelerator and calls start_trackers() once; every row of
metrics.jsonl then reaches the trackers at its iteration (hfgpt.training.metrics.MetricsLog). Tensorboard
writes to out_dir/runs/<wandb_project>/, wandb to out_dir/wandb/. The recipe goes in as the run's
configuration; it holds no secrets (the Hub token is never part of it).
"""

from pathlib import Path

from hfgpt.config import Recipe, tracker_names
from hfgpt.core.errors import UserError

PACKAGES = {"comet_ml": "comet_ml", "dvclive": "dvclive", "tensorboard": "tensorboard", "wandb": "wandb"}


def tracker_options(recipe: Recipe) -> dict:
    """Accelerator(**tracker_options(recipe)): log_with and the folder for trackers that write files."""
    names = tracker_names(recipe.log.log_with)
    if not names:
        return {}
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [n for n in names if n not in available]
    if missing:
        packages = " ".join(PACKAGES.get(n, n) for n in missing)
        raise UserError(f"log_with={recipe.log.log_with}: {', '.join(missing)} is not installed: pip install {packages} "
                        "(pip install 'hfgpt[trackers]' brings tensorboard, wandb and trackio), or leave it out of log_with")
    return {"log_with": names, "project_dir": str(Path(recipe.train.out_dir) / "runs")}


def start_trackers(accelerator, recipe: Recipe) -> None:
    """Open the run in every tracker, with the recipe as its configuration (main process only)."""
    if not accelerator.log_with:
        return
    out_dir = Path(recipe.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = {"name": recipe.log.wandb_run_name} if recipe.log.wandb_run_name else {}
    # tensorboard's hparams take numbers, strings and booleans only
    config = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in recipe.to_dict().items()
              if v is not None}
    accelerator.init_trackers(recipe.log.wandb_project, config=config,
                              init_kwargs={"wandb": {"dir": str(out_dir)} | name, "trackio": name})
