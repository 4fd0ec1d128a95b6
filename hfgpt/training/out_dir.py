"""A training run's out_dir: one run at a time, a new run never over another run's results, no leftovers.

    with claim(recipe, accelerator):       # train() runs its loop inside this
        ...

Before the run writes anything (checked by the main process, its verdict shared with the others so
that a multi-process run stops together):
- out_dir must be a folder, or a path where one can be made: not a file, not below a file;
- out_dir/.lock is held for the run's lifetime (hfgpt.core.lock.hold_lock): a second run into the
  same out_dir stops with one line naming the holder; the lock of a killed run is taken over, with a note;
- temporary files and folders of killed writers in out_dir and out_dir/checkpoints are removed
  (those of live writers are not), with a line saying how much that freed;
- a model save that a killed run had finished writing but not moved into place is completed;
- init_from: auto becomes resume when out_dir has a checkpoint, else the start it names (scratch, or
  MODEL in auto:MODEL), said in one line; what an earlier attempt of this very run left without a
  checkpoint (its metrics, a model saved under this recipe) is replaced, so the same command line
  works as the first start and as every restart;
- a new run (any init_from but resume) stops if out_dir holds another run's model, checkpoints or
  metrics, and offers --init_from=resume or --overwrite_out_dir=True; the latter removes the files
  that run wrote there (those its training.json lists; else the model files hfgpt writes, adapter/,
  card, checkpoints/, metrics.jsonl, loss.png), says which, and leaves everything else.
"""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml
from accelerate.utils import broadcast_object_list

from hfgpt.config import Recipe, auto_start
from hfgpt.core.errors import UserError
from hfgpt.core.files import read_json, remove_dead_temp, remove_tree, size_text
from hfgpt.core.layout import (CARD, EVAL_RESULTS, FACTS, METRICS, MODEL_FILES, PLOT, SHARDS, TEMP_PREFIXES, checkpoint_dir,
                               list_checkpoints)
from hfgpt.core.lock import LOCK, holder_text, hold_lock
from hfgpt.model.lora import ADAPTER
from hfgpt.training.checkpoint import finish_saves


def usable_folder(out: Path) -> None:
    """out_dir is a folder or can be made one: not a file, not below a file."""
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            below = "" if path == out else f" and out_dir={out} would be below it"
            raise UserError(f"out_dir={out}: {path} is a file, not a folder{below}: give a folder, e.g. --out_dir=out")


def holds_model(out: Path) -> bool:
    """Whether out_dir holds a saved model (weights, or a transformers config naming its model_type)."""
    return (out / "model.safetensors").is_file() or (out / "model.safetensors.index.json").is_file() or \
        "model_type" in read_json(out / "config.json")


def earlier_run(out: Path) -> list[str]:
    """What makes out_dir another run's: its model, checkpoints and metrics (nothing when it is new)."""
    found = (["model"] if holds_model(out) else []) + ([METRICS] if (out / METRICS).is_file() else [])
    ckpts = checkpoint_dir(out)
    names = sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) if ckpts.is_dir() else []
    if names:
        found.append(f"{ckpts.name}/ ({', '.join(names) if len(names) <= 3 else f'{names[0]}, ..., {names[-1]}'})")
    return found


def is_hfgpt_card(path: Path) -> bool:
    try:
        head = path.read_text(encoding="utf-8")[:2000]
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith("---") and "- hfgpt" in head


def run_files(out: Path) -> list[Path]:
    """What an earlier run (or model save) wrote in out_dir: the model folder's files (those the saved
    model's training.json lists, every file that save wrote; for a model saved before that list
    existed, hfgpt's names when out_dir holds a model), the card only when it is hfgpt's, the log,
    the plot, adapter/ and checkpoints/."""
    model = holds_model(out)
    listed = read_json(out / FACTS).get("files")
    wrote = set(listed) if isinstance(listed, list) else None
    found = []
    for path in sorted(out.iterdir()) if out.is_dir() else []:
        name = path.name
        if wrote is not None:
            ours = name in wrote or name in (METRICS, PLOT, EVAL_RESULTS, FACTS)
        else:
            ours = ((model and (name in MODEL_FILES or path.match(SHARDS))) or name in (METRICS, PLOT)
                    or (name == CARD and is_hfgpt_card(path)))
        if path.is_file() and not path.is_symlink() and ours:
            found.append(path)
    for folder in ([out / ADAPTER] if model else []) + [checkpoint_dir(out)]:  # a LoRA run's adapter/, checkpoints/
        if folder.is_dir() and not folder.is_symlink():
            found.append(folder)
    return found


def remove_earlier_run(out: Path) -> tuple[list[str], list[str]]:
    """Delete the files hfgpt wrote in out_dir (run_files); returns (removed, kept) names."""
    removed = []
    for path in run_files(out):
        if path.is_dir():
            remove_tree(path)  # renamed first: a kill midway leaves no half checkpoint
            removed.append(f"{path.name}/")
        else:
            path.unlink()
            removed.append(path.name)
    kept = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    return removed, kept


def resolve_auto(recipe: Recipe, out: Path) -> bool:
    """init_from: auto (or auto:MODEL) becomes resume when out_dir has a complete checkpoint, else the
    start it names, and says which. Returns whether what out_dir holds is an earlier attempt of this
    run that saved no checkpoint (only its metrics and plot, or a model saved under this same
    recipe), which the start then replaces."""
    start = auto_start(recipe.model.init_from)
    if start is None:
        return False
    if list_checkpoints(out):
        recipe.model.init_from = "resume"
        print(f"init_from=auto: {checkpoint_dir(out)} has checkpoints of this run: resuming the newest")
        return False
    recipe.model.init_from = start
    found = earlier_run(out)
    saved = yaml.safe_load((out / "recipe.yaml").read_text(encoding="utf-8")) if (out / "recipe.yaml").is_file() else None
    ignore = ("init_from", "resume_from", "overwrite_out_dir")
    same = isinstance(saved, dict) and {k: v for k, v in saved.items() if k not in ignore} == \
        {k: v for k, v in recipe.to_dict().items() if k not in ignore}
    own = bool(found) and (same or not holds_model(out))
    print(f"init_from=auto: no checkpoint in {checkpoint_dir(out)} yet: starting "
          + ("from scratch" if start == "scratch" else f"from {start}")
          + (f" (replacing {', '.join(found)}, left by an earlier attempt of this run)" if own else ""))
    return own


def inside(init_from: str, folder: Path) -> bool:
    """Whether init_from is a local folder that is `folder` or lies below it."""
    p = Path(init_from)
    return init_from not in ("scratch", "resume") and p.exists() and (
        p.resolve() == folder.resolve() or folder.resolve() in p.resolve().parents)


def prepare_out_dir(recipe: Recipe) -> None:
    """The main process's checks and clean-up, with out_dir's lock held (see the module docstring)."""
    out = Path(recipe.train.out_dir)
    if finished := finish_saves(out):
        print(f"finished the model save into {out} that a killed run had left halfway ({', '.join(finished)})")
    own_leftovers = resolve_auto(recipe, out)
    init_from = recipe.model.init_from
    found = earlier_run(out) if init_from != "resume" else []
    if inside(init_from, out):
        raise UserError(f"init_from={init_from} is inside out_dir={out}: a new run there would replace the model "
                        "it starts from; write it to another --out_dir (or continue that run with --init_from=resume)")
    if found and not (recipe.train.overwrite_out_dir or own_leftovers):
        raise UserError(f"out_dir={out} holds another run ({', '.join(found)}): continue it with --init_from=resume, "
                        "start over with --overwrite_out_dir=True (removes that run's files), or pick another --out_dir")
    freed = remove_dead_temp(out, TEMP_PREFIXES) + remove_dead_temp(checkpoint_dir(out), TEMP_PREFIXES)
    if freed:
        print(f"removed the temporary files of a killed run from {out} ({size_text(freed)} freed)")
    if found:
        removed, kept = remove_earlier_run(out)
        print(f"{'overwrite_out_dir' if recipe.train.overwrite_out_dir else 'init_from=auto'}: removed the earlier "
              f"run's {', '.join(removed)} from {out}" + (f" (kept {', '.join(kept)})" if kept else ""))


@contextmanager
def claim(recipe: Recipe, accelerator) -> Iterator[None]:
    """Hold out_dir for the block: checked, locked and cleaned by the main process; every process
    stops with the same one-line error when it is refused."""
    with ExitStack() as stack:
        problem = ""
        if accelerator.is_main_process:
            try:
                stack.enter_context(take(recipe))
            except UserError as e:
                problem = str(e)
        if accelerator.num_processes > 1:  # the verdict, and what init_from: auto became
            problem, recipe.model.init_from = broadcast_object_list([problem, recipe.model.init_from])
        if problem:
            raise UserError(problem)
        yield


@contextmanager
def take(recipe: Recipe) -> Iterator[None]:
    """The main process's part of claim(): out_dir made, locked and prepared for the block."""
    out = Path(recipe.train.out_dir)
    usable_folder(out)
    hint = ("wait for it to end, or train into another --out_dir (python -m hfgpt.eval and hfgpt.sample can read "
            f"{out} meanwhile)")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"out_dir={out} cannot be created ({e.strerror}): give a writable folder") from None
    try:
        with hold_lock(out, hint) as stale:
            if stale:
                print(f"took over {out / LOCK} from a run that ended without releasing it ({holder_text(stale)})")
            prepare_out_dir(recipe)
            yield
    except BaseException:
        if created and not any(out.iterdir()):  # a run that failed before writing anything leaves no folder
            out.rmdir()
        raise
