"""Push a run to the Hugging Face Hub: in the background while it trains, or once when it is done.

    pusher = Pusher("out", "user/name", private=None, strategy="every_save")   # checks the token and the repo
    pusher.after_save(iter_num, val_loss, model_saved=True, checkpoint=folder)  # train, after each evaluation
    stopped = pusher.finish("end of training")                                  # the last push, waited for

The repo is created if missing. What goes up is out_dir's model folder and nothing else (PUSHED:
config, weights, generation config, tokenizer files, README.md model card, loss.png, recipe.yaml,
metrics.jsonl, training.json, eval_results.json), its tensorboard logs (runs/), and with
hub_strategy: checkpoint (--checkpoint) the newest resumable checkpoint as last-checkpoint/ (resume
from it with resume_from=user/name). Never checkpoints/ itself, wandb/, hidden files, other files
(named once as left out), or a link that leads out of out_dir.

While training, each push is a snapshot of those files in out_dir/.push-<host>-<pid>-<n> (hard links
where a file is only ever replaced, never rewritten; copies of the files that grow) uploaded by one
background thread, so the loop does not wait and the files cannot change under the upload. A push
that is still queued when the next one comes is dropped for it. huggingface_hub tries a request
again itself when another try may pass (no connection, a timeout, 5xx, 429); any other failure (a
4xx answer) is reported at once. Training goes on and the local files are untouched. The last push is waited for and
its commit URL printed; SIGINT or SIGTERM stop that wait at once. A pusher removes only its own
snapshots and those of pushers that died. The token comes from HF_TOKEN or `hf auth login` and is
never printed or written.
"""

import concurrent.futures
import fnmatch
import itertools
import os
import queue
import shutil
import threading
from pathlib import Path

from tqdm.auto import tqdm

from hfgpt.core.errors import UserError
from hfgpt.core.files import owner_tag, remove_dead_temp
from hfgpt.core.layout import (CHECKPOINTS, LAST_CHECKPOINT, METRICS, MODEL_FILES, RUN_FILES, SHARDS, SNAPSHOT_PREFIX,
                               latest)
from hfgpt.core.signals import Interrupted, RaiseOnSignal, signal_name
from hfgpt.hub.card import write_card
from hfgpt.hub.token import reason

# The files of out_dir that go to the Hub (docs/hub.md's list), as patterns of top-level names.
PUSHED = (*MODEL_FILES, SHARDS, *RUN_FILES)
PUSHED_DIRS = ("runs",)  # tensorboard's logs
UNSAID = {CHECKPOINTS, "wandb"}  # left out without a word: hfgpt's own, documented as local
APPENDED = {METRICS}  # files that grow in place: copied, never linked


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link (free, and unchanged when hfgpt later replaces src by a new file), else a copy."""
    if Path(src).name in APPENDED:
        shutil.copy2(src, dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, links followed, is in `root` (a resolved folder)."""
    return path.resolve().is_relative_to(root)


def _copy_tree(src: Path, dest: Path, root: Path, copy) -> list[str]:
    """Copy the files below src into dest, but hidden ones and links that lead out of `root` or to a
    folder; returns those left out (not the hidden ones), relative to src's parent."""
    left = []
    for folder, dirs, files in os.walk(src):
        folder = Path(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in [d for d in dirs if (folder / d).is_symlink()]:
            left.append(f"{(folder / name).relative_to(src.parent)}/ (a link to a folder)")
            dirs.remove(name)
        for name in sorted(files):
            path = folder / name
            if name.startswith(".") or not path.is_file():
                continue
            if not _inside(path, root):
                left.append(f"{path.relative_to(src.parent)} (a link out of {root.name})")
                continue
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            copy(path.resolve(), target)
    return left


def snapshot(out_dir: Path, dest: Path, checkpoint: Path | None) -> list[str]:
    """The files of out_dir that go to the Hub (PUSHED, PUSHED_DIRS), as they are now, in `dest`;
    returns what was left out (but hidden files and UNSAID folders)."""
    root, left = out_dir.resolve(), []
    dest.mkdir(parents=True)
    for item in sorted(out_dir.iterdir()):
        if item.name.startswith(".") or (item.name in UNSAID and not item.is_symlink()):
            continue
        if not _inside(item, root):
            left.append(f"{item.name} (a link out of {root.name})")
        elif item.is_dir() and item.name in PUSHED_DIRS and not item.is_symlink():
            left += _copy_tree(item, dest / item.name, root, shutil.copy2)  # tensorboard appends to its files
        elif item.is_file() and any(fnmatch.fnmatchcase(item.name, p) for p in PUSHED):
            link_or_copy(item.resolve(), dest / item.name)
        else:
            left.append(item.name + ("/" if item.is_dir() else ""))
    if checkpoint is not None:
        _copy_tree(checkpoint, dest / LAST_CHECKPOINT, checkpoint.resolve(), link_or_copy)
    return left


class Pusher:
    """Pushes one run's out_dir to one Hub repo, one commit per push, on a background thread."""

    def __init__(self, out_dir: str | Path, repo_id: str | None = None, private: bool | None = None,
                 strategy: str = "every_save"):
        from huggingface_hub import HfApi, constants, get_token

        if constants.HF_HUB_OFFLINE:
            raise UserError("cannot push to the Hub in offline mode (HF_HUB_OFFLINE=1 is set): unset HF_HUB_OFFLINE, "
                            "or push later with python -m hfgpt.push OUT_DIR")
        if get_token() is None:
            raise UserError("pushing to the Hub needs a token with write access: run `hf auth login` or set HF_TOKEN")
        self.out_dir, self.strategy = Path(out_dir), strategy
        self.api = HfApi()
        # a bad token, no network, no right to that namespace: stop before training, not at its first save
        try:
            user = self.api.whoami()["name"]
        except Exception as e:
            raise UserError(f"the Hub did not accept the token ({reason(e)}): run `hf auth login` or set HF_TOKEN to a "
                            "token with write access") from None
        repo_id = repo_id or f"{user}/{self.out_dir.resolve().name}"
        try:
            repo = self.api.create_repo(repo_id, private=private, exist_ok=True)
        except Exception as e:
            raise UserError(f"could not create the Hub repo {repo_id} ({reason(e)}): check hub_model_id and that your "
                            "token may write to that namespace") from None
        self.repo_id, self.url = repo.repo_id, str(repo)
        self.queued: list[tuple] = []  # (future, snapshot folder) not finished yet
        self.counter = itertools.count()
        self.said: set[str] = set()  # what was left out, already told
        self.commit_url: str | None = None  # of the final push
        remove_dead_temp(self.out_dir, (SNAPSHOT_PREFIX,))  # snapshots of a pusher that was killed
        # One daemon worker, uploads in order: a stopped run exits without waiting for it.
        self.jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, name="hfgpt-push", daemon=True).start()

    @classmethod
    def for_recipe(cls, recipe) -> "Pusher":
        """The recipe's push settings; its hub_model_id is set to the resolved repo (saved in recipe.yaml)."""
        h = recipe.hub
        pusher = cls(recipe.train.out_dir, h.hub_model_id, h.hub_private, h.hub_strategy)
        h.hub_model_id = pusher.repo_id
        print(f"pushing to {pusher.url} (hub_strategy: {h.hub_strategy})")
        return pusher

    def _work(self) -> None:
        while True:
            future, args = self.jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self._upload(*args))
                except BaseException as e:
                    future.set_exception(e)

    def push(self, message: str, checkpoint: Path | None = None) -> concurrent.futures.Future:
        """Snapshot out_dir (and the checkpoint, as last-checkpoint/) now; upload it in the background."""
        for future, folder in self.queued:
            if future.cancel():  # not started yet: this newer push replaces it
                shutil.rmtree(folder, ignore_errors=True)
        self.queued = [(f, d) for f, d in self.queued if not f.done()]
        folder = self.out_dir / f"{SNAPSHOT_PREFIX}{owner_tag()}-{next(self.counter)}"
        left = [name for name in snapshot(self.out_dir, folder, checkpoint) if name not in self.said]
        if left:
            tqdm.write(f"left out of the push to {self.repo_id} (not part of a model folder): {', '.join(left)}")
            self.said.update(left)
        write_card(folder, model_id=self.repo_id)  # the card on the Hub names the repo in its code
        future = concurrent.futures.Future()
        self.jobs.put((future, (folder, message, checkpoint is not None)))
        self.queued.append((future, folder))
        return future

    def _upload(self, folder: Path, message: str, with_checkpoint: bool):
        """Runs on the background worker: upload; None after a failure. huggingface_hub tries a
        request again itself when another try may pass (no connection, a timeout, 408, 429, 5xx:
        5 more tries over about 25 s); any other answer (401, 403, 404, 413, ...) would come again,
        so it is reported at once."""
        try:
            return self.api.upload_folder(repo_id=self.repo_id, folder_path=folder, commit_message=message,
                                          delete_patterns=[f"{LAST_CHECKPOINT}/*"] if with_checkpoint else None)
        except Exception as e:  # whatever went wrong, training must go on
            tqdm.write(f"warning: push '{message}' to {self.repo_id} failed ({reason(e)}); the files are safe in "
                       f"{self.out_dir}: push them later with {self.command()}")
            return None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def command(self) -> str:
        return f"python -m hfgpt.push {self.out_dir} --hub_model_id={self.repo_id}"

    def after_save(self, iter_num: int, val_loss: float, model_saved: bool, checkpoint: Path) -> None:
        """Called after every evaluation's saves: push in the background as the strategy says."""
        message = f"iter {iter_num}: val loss {val_loss:.4f}"
        if self.strategy == "checkpoint":
            self.push(message, checkpoint)
        elif self.strategy == "every_save" and model_saved:
            self.push(message)

    def finish(self, message: str, stopped: int = 0) -> int:
        """The last push, waited for; its commit URL is printed and kept in self.commit_url. A
        failed push raises UserError, but in a run a signal stopped (`stopped`, its number) it is
        reported and the run keeps the signal's exit code. SIGINT or SIGTERM during the wait stop it at once, leaving the upload
        unfinished (the files are safe in out_dir). Returns the signal that stopped the run, 0 if none."""
        found = latest(self.out_dir) if self.strategy == "checkpoint" else None
        last = self.push(message, found[0] if found else None)
        try:
            with RaiseOnSignal():
                for future, _ in self.queued:
                    future.result()
        except Interrupted as e:
            for future, folder in self.queued:
                if future.cancel():
                    shutil.rmtree(folder, ignore_errors=True)
            tqdm.write(f"{signal_name(e.signum)}: stopped waiting for the push to {self.repo_id}; the files are safe "
                       f"in {self.out_dir}: push them with {self.command()}")
            return e.signum
        info = last.result()
        if info is None:
            failure = (f"the final push to {self.repo_id} failed (see the warning above); the run is saved in "
                       f"{self.out_dir}: push it with {self.command()}")
            if not stopped:
                raise UserError(failure)
            tqdm.write(f"error: {failure}")
            return stopped
        self.commit_url = info.commit_url
        print(f"pushed {self.out_dir} to {self.repo_id}: {info.commit_url}")
        return stopped
