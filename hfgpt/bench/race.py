"""python -m hfgpt.bench race: nanoGPT's shakespeare_char recipe against an hfgpt recipe, as whole processes.

    python -m hfgpt.bench race recipes/shakespeare_char_cpu_fast.yaml --nanogpt=../nanoGPT --pairs=3
    python -m hfgpt.bench race recipes/shakespeare_char_cpu_fast.yaml --nanogpt=../nanoGPT --threads=1 --json=race.json
    python -m hfgpt.bench race recipes/shakespeare_char.yaml --nanogpt=../nanoGPT   # a CUDA GPU: nanoGPT's GPU recipe
    python -m hfgpt.bench race --source=notes.txt --tokenizer=char --time_budget=35s --nanogpt=../nanoGPT --plot=race.png

What a nanoGPT user waits for is a model as good as nanoGPT's: this times both to a saved model
and scores both. First, untimed: hfgpt's data is prepared (python -m hfgpt.prepare RECIPE), and
nanoGPT's by its own data/shakespeare_char/prepare.py, from the same text, in a scratch copy of the
clone (its .git, out* folders and data files left out); the two must hold the same token ids. Then
--pairs times, alternating which goes first:
  nanoGPT  python train.py config/train_shakespeare_char.py NANOGPT_CPU --out_dir=...  (in the copy;
           NANOGPT_CPU is the command line of recipes/shakespeare_char_cpu.yaml's header; on a CUDA
           GPU, nanoGPT's GPU recipe: the config alone)
  hfgpt    python -m hfgpt.train RECIPE [--key=value ...] --out_dir=...
each timed from the command to its exit (imports, evaluations, saving), with its CPU seconds and
the load average before it. Then, untimed: nanoGPT's ckpt.pt becomes a model folder (hfgpt.convert
to-hf, with its meta.pkl) and hfgpt.eval scores both on the whole val split of hfgpt's data: nats
per character over the same tokens. Reported: every pair (walls, CPU seconds, the ratio hfgpt /
nanoGPT, both losses) and the medians, with the CPU, and each side's val-loss estimates with the
seconds at which it printed them (--plot draws them). --threads=N sets OMP_NUM_THREADS for both.
Any char-level text races (nanoGPT's prepare.py makes its char vocabulary from any input.txt),
e.g. a time budget against nanoGPT's fixed recipe: --source=FILE --tokenizer=char --time_budget=35s.
"""

import os
import re
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hfgpt.bench import child_env, cpu_name, measure, report
from hfgpt.config import Command, Parsed, Recipe, command, option
from hfgpt.core.errors import UserError

# nanoGPT's README command for a CPU, as recipes/shakespeare_char_cpu.yaml's header gives it
NANOGPT_CPU = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
               "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
               "--lr_decay_iters=2000", "--dropout=0.0"]
CONFIG = "config/train_shakespeare_char.py"
DATA = Path("data") / "shakespeare_char"  # in nanoGPT's folder: prepare.py, then train.bin, val.bin, meta.pkl
SIDES = ("nanogpt", "hfgpt")


@dataclass
class BenchRaceOptions:
    nanogpt: str | None = option(None)
    """A nanoGPT clone (read only: its recipe runs in a scratch copy)."""
    pairs: int = option(3, min=1)
    """Pairs of runs, alternating which side goes first."""
    threads: int | None = option(None, min=1)
    """OMP_NUM_THREADS for both sides; None leaves it to torch (one thread per core)."""
    work_dir: str | None = option(None)
    """Keep the runs here (nanogpt/ the scratch copy, nanogpt-N/ and hfgpt-N/ the runs); None: a temporary
    folder, removed at the end."""
    json: str | None = option(None)
    """Write the result here as JSON."""
    plot: str | None = option(None)
    """Draw both sides' val loss against wall seconds into this PNG."""


def prepare_both(recipe: Recipe, recipe_argv: list[str], clone: Path, scratch: Path, env: dict) -> None:
    """hfgpt's data by hfgpt.prepare; nanoGPT's by its own prepare.py in a scratch copy of the clone,
    from the same text; refused when the two token files differ."""
    from hfgpt.data.meta import read_meta
    from hfgpt.data.nanogpt_data import same_tokens
    from hfgpt.data.sources import open_source
    from hfgpt.data.spec import data_spec

    measure([sys.executable, "-m", "hfgpt.prepare", *recipe_argv], env, pss=False)
    ours = data_spec(recipe).folder
    texts = open_source(recipe.data, ours).files
    if len(texts) != 1:
        raise UserError(f"the race trains nanoGPT's shakespeare_char recipe, whose prepare.py reads one input.txt: the "
                        f"recipe's source must be one text file (tiny Shakespeare), not {len(texts)} files")
    shutil.copytree(clone, scratch, ignore=shutil.ignore_patterns(".git", "out*", "*.bin", "*.pkl", "*.pt", "input.txt"))
    shutil.copy(texts[0], scratch / DATA / "input.txt")
    measure([sys.executable, str(DATA / "prepare.py")], env, cwd=scratch, pss=False)
    if not same_tokens(ours, read_meta(ours), scratch / DATA):
        raise UserError(f"nanoGPT's prepare.py wrote other token ids than hfgpt's {ours}: the two losses would not be "
                        "comparable; race a char-level recipe on tiny Shakespeare (tokenizer: char, val_fraction: 0.1)")


def commands(recipe: Recipe, recipe_argv: list[str], scratch: Path, outs: dict[str, Path]) -> dict:
    """Each side's command line and the folder it runs in."""
    from hfgpt.core.device import device_type

    nano_args = [] if device_type(recipe.system.device) == "cuda" else NANOGPT_CPU
    return {"nanogpt": ([sys.executable, "train.py", CONFIG, *nano_args, f"--out_dir={outs['nanogpt']}"], scratch),
            "hfgpt": ([sys.executable, "-m", "hfgpt.train", *recipe_argv, f"--out_dir={outs['hfgpt']}"], Path.cwd())}


def whole_val_loss(model: Path, recipe: Recipe, out: Path) -> float:
    """hfgpt.eval's loss over the whole val split of the recipe's data."""
    import json

    from hfgpt import eval as hf_eval

    if hf_eval.main([str(model), f"--data_dir={recipe.data.data_dir}", f"--dataset={recipe.data.dataset}", f"--out={out}"]):
        raise UserError(f"hfgpt.eval could not score {model} (see above)")
    return json.loads(out.read_text())["loss"]


# what each side prints at an evaluation: nanoGPT's train.py and hfgpt's progress
EVALUATION = re.compile(r"^(?:step|iter) (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def val_curve(lines: list[tuple[float, str]]) -> list[list[float]]:
    """[seconds since the process started, iteration, val loss] of each evaluation a side printed."""
    return [[round(t, 2), int(m[1]), float(m[3])] for t, line in lines if (m := EVALUATION.match(line.strip()))]


def plot_race(runs: list[dict], png: Path, title: str) -> None:
    """The sides' val-loss estimates against wall seconds since each process started (every pair),
    each run's whole-val score at its exit as a larger marker."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hfgpt.core.files import atomic_file

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for side, color, name in (("nanogpt", "C0", "nanoGPT"), ("hfgpt", "C1", "hfgpt")):
        for i, run in enumerate(runs):
            if run[f"{side}_curve"]:
                t, _, loss = zip(*run[f"{side}_curve"])
                ax.plot(t, loss, "o-", color=color, markersize=3, alpha=0.8,
                        label=f"{name}: val loss estimates" if i == 0 else None)
            if run.get(f"{side}_val_loss") is not None:
                ax.plot([run[f"{side}_s"]], [run[f"{side}_val_loss"]], "*", color=color, markersize=12,
                        label=f"{name}: whole-val loss at its exit" if i == 0 else None)
    ax.set_xlabel("wall seconds since the process started")
    ax.set_ylabel("val loss (nats per token)")
    ax.set_ylim(top=min(4.5, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    with atomic_file(png) as f:
        fig.savefig(f, format="png")


def race(recipe: Recipe, recipe_argv: list[str], o: BenchRaceOptions, work: Path) -> dict:
    from hfgpt import convert

    clone = Path(o.nanogpt)
    for needed in ("train.py", CONFIG, DATA / "prepare.py"):
        if not (clone / needed).is_file():
            raise UserError(f"--nanogpt={o.nanogpt} has no {needed}: give the folder of a nanoGPT clone")
    env = child_env(**({"OMP_NUM_THREADS": str(o.threads)} if o.threads else {}))
    scratch = work / "nanogpt"
    prepare_both(recipe, recipe_argv, clone, scratch, env)
    runs, outs = [], [{side: work / f"{side}-{pair}" for side in SIDES} for pair in range(o.pairs)]
    for pair in range(o.pairs):
        sides = commands(recipe, recipe_argv, scratch, outs[pair])
        run = {"first": SIDES[pair % 2]}
        for side in SIDES if pair % 2 == 0 else reversed(SIDES):
            cmd, cwd = sides[side]
            shutil.rmtree(outs[pair][side], ignore_errors=True)
            run[f"{side}_load"] = round(os.getloadavg()[0], 2)
            result = measure(cmd, env, cwd=cwd, pss=False, lines=True)
            run[f"{side}_s"], run[f"{side}_cpu_s"] = round(result["seconds"], 2), round(result["cpu_seconds"], 2)
            run[f"{side}_curve"] = val_curve(result["lines"])
            print(f"pair {pair + 1}: {side} {result['seconds']:.1f} s ({result['cpu_seconds']:.1f} CPU s, load "
                  f"{run[f'{side}_load']})", flush=True)
        run["ratio"] = round(run["hfgpt_s"] / run["nanogpt_s"], 3)
        run["cpu_ratio"] = round(run["hfgpt_cpu_s"] / run["nanogpt_cpu_s"], 3)
        runs.append(run)
    for pair, (run, out) in enumerate(zip(runs, outs)):  # scored after every timed run: nothing overlaps them
        converted = out["nanogpt"] / "hf"
        if convert.main_to_hf([str(out["nanogpt"] / "ckpt.pt"), str(converted), f"--meta={scratch / DATA / 'meta.pkl'}"]):
            raise UserError(f"hfgpt.convert could not convert {out['nanogpt'] / 'ckpt.pt'} (see above)")
        run["nanogpt_val_loss"] = round(whole_val_loss(converted, recipe, work / f"nanogpt-{pair}.json"), 4)
        run["hfgpt_val_loss"] = round(whole_val_loss(out["hfgpt"], recipe, work / f"hfgpt-{pair}.json"), 4)
        print(f"pair {pair + 1}: {run}", flush=True)
    median = {key: statistics.median(run[key] for run in runs)
              for key in ("ratio", "cpu_ratio", "nanogpt_s", "hfgpt_s", "nanogpt_val_loss", "hfgpt_val_loss")}
    nano_cmd = commands(recipe, recipe_argv, scratch, outs[0])["nanogpt"][0]
    if o.plot:
        plot_race(runs, Path(o.plot), f"{' '.join(recipe_argv)} against nanoGPT's recipe; {cpu_name()}, threads {o.threads}")
    return {"recipe": " ".join(recipe_argv), "nanogpt_command": " ".join(["python", *nano_cmd[1:-1]]), "cpu": cpu_name(),
            "threads": o.threads, "pairs": runs, **{f"median_{key}": value for key, value in median.items()},
            "hfgpt_at_or_below_in_every_pair": all(r["hfgpt_val_loss"] <= r["nanogpt_val_loss"] for r in runs)}


@command(Command("bench race", __doc__.split("\n\n")[0], options=BenchRaceOptions, recipe_step="train"))
def main(parsed: Parsed) -> int:
    o = parsed.options
    if o.nanogpt is None:
        raise UserError("bench race needs --nanogpt=DIR: the folder of a nanoGPT clone")
    if o.work_dir:
        work = Path(o.work_dir).resolve()
        work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(work / "nanogpt", ignore_errors=True)
        result = race(parsed.recipe, parsed.recipe_argv, o, work)
    else:
        with tempfile.TemporaryDirectory(prefix="hfgpt-race-") as tmp:
            result = race(parsed.recipe, parsed.recipe_argv, o, Path(tmp).resolve())
    report(result, o.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
