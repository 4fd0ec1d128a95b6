"""Push a run to the Hugging Face Hub: in the background while it trains, or once when it is done.

    pusher = Pusher("out", "user/name", private=None, strategy="every_save")   # checks the token and the repo
    pusher.after_save(iter_num, val_loss, model_saved=True, checkpoint=folder)  # train, after each evaluation
    pusher.finish("end of training")                                            # the last push, waited for

The repo is created if missing. What goes up is out_dir's model folder (config, weights,
tokenizer, README.md model card, loss.png, recipe.yaml, metrics.jsonl, training.json,
eval_results.json), its tensorboard logs (runs/), and with hub_strategy: checkpoint (--checkpoint)
the newest resumable checkpoint as last-checkpoint/ (resume from it with resume_from=user/name).
Never checkpoints/ itself, wandb/ or hidden files.

While training, each push is a snapshot of those files (hard links where a file is only ever
replaced, never rewritten; copies of the files that grow) uploaded by huggingface_hub's single
background worker, so the loop does not wait and the files cannot change under the upload. A
push that is still queued when the next one comes is dropped for it. A failed upload is tried
again (3 tries), then reported; training goes on and the local files are untouched. The last
push is waited for and its commit URL printed. The token comes from HF_TOKEN or `hf auth login`
and is never printed or written.
"""

import itertools
import os
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from hfgpt.core.errors import UserError
from hfgpt.hub.card import write_card
from hfgpt.hub.download import LAST_CHECKPOINT
from hfgpt.hub.token import reason
from hfgpt.training.checkpoint import latest

APPENDED = {"metrics.jsonl"}  # files that grow in place: copied, never linked
SKIPPED_DIRS = {"checkpoints", "wandb"}
SNAPSHOT_PREFIX = ".push-"
RETRIES = 3  # tries per push
RETRY_WAIT = 2.0  # seconds before the 2nd try; doubled before each next one


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """A hard link (free, and unchanged when hfgpt later replaces src by a new file), else a copy."""
    if Path(src).name in APPENDED:
        shutil.copy2(src, dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def snapshot(out_dir: Path, dest: Path, checkpoint: Path | None) -> None:
    """The files of out_dir that go to the Hub, as they are now, in `dest`."""
    dest.mkdir(parents=True)
    for item in sorted(out_dir.iterdir()):
        if item.name.startswith(".") or item.name in SKIPPED_DIRS:
            continue
        if item.is_file():
            link_or_copy(item, dest / item.name)
        elif item.is_dir():  # runs/: tensorboard appends to its event files
            shutil.copytree(item, dest / item.name, ignore=shutil.ignore_patterns(".*"))
    if checkpoint is not None:
        shutil.copytree(checkpoint, dest / LAST_CHECKPOINT, copy_function=link_or_copy)


class Pusher:
    """Pushes one run's out_dir to one Hub repo, one commit per push, on a background thread."""

    def __init__(self, out_dir: str | Path, repo_id: str | None = None, private: bool | None = None,
                 strategy: str = "every_save"):
        from huggingface_hub import HfApi, get_token

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
        for leftover in self.out_dir.glob(f"{SNAPSHOT_PREFIX}*"):  # from a run that was killed mid-upload
            shutil.rmtree(leftover, ignore_errors=True)

    @classmethod
    def for_recipe(cls, recipe) -> "Pusher":
        """The recipe's push settings; its hub_model_id is set to the resolved repo (saved in recipe.yaml)."""
        h = recipe.hub
        pusher = cls(recipe.train.out_dir, h.hub_model_id, h.hub_private, h.hub_strategy)
        h.hub_model_id = pusher.repo_id
        print(f"pushing to {pusher.url} (hub_strategy: {h.hub_strategy})")
        return pusher

    def push(self, message: str, checkpoint: Path | None = None):
        """Snapshot out_dir (and the checkpoint, as last-checkpoint/) now; upload it in the background."""
        for future, folder in self.queued:
            if future.cancel():  # not started yet: this newer push replaces it
                shutil.rmtree(folder, ignore_errors=True)
        self.queued = [(f, d) for f, d in self.queued if not f.done()]
        folder = self.out_dir / f"{SNAPSHOT_PREFIX}{os.getpid()}-{next(self.counter)}"
        snapshot(self.out_dir, folder, checkpoint)
        write_card(folder, model_id=self.repo_id)  # the card on the Hub names the repo in its code
        future = self.api.run_as_future(self._upload, folder, message, checkpoint is not None)
        self.queued.append((future, folder))
        return future

    def _upload(self, folder: Path, message: str, with_checkpoint: bool):
        """Runs on the background worker: upload with retries; None after the last failed try."""
        try:
            for attempt in range(1, RETRIES + 1):
                try:
                    return self.api.upload_folder(repo_id=self.repo_id, folder_path=folder, commit_message=message,
                                                  delete_patterns=[f"{LAST_CHECKPOINT}/*"] if with_checkpoint else None)
                except Exception as e:  # whatever went wrong, training must go on
                    if attempt == RETRIES:
                        tqdm.write(f"warning: push '{message}' to {self.repo_id} failed after {attempt} tries "
                                   f"({reason(e)}); the files are safe in {self.out_dir}: push them later with "
                                   f"python -m hfgpt.push {self.out_dir} --hub_model_id={self.repo_id}")
                        return None
                    time.sleep(RETRY_WAIT * 2 ** (attempt - 1))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def after_save(self, iter_num: int, val_loss: float, model_saved: bool, checkpoint: Path) -> None:
        """Called after every evaluation's saves: push in the background as the strategy says."""
        message = f"iter {iter_num}: val loss {val_loss:.4f}"
        if self.strategy == "checkpoint":
            self.push(message, checkpoint)
        elif self.strategy == "every_save" and model_saved:
            self.push(message)

    def finish(self, message: str) -> str:
        """The last push, waited for; returns its commit URL (a UserError if it failed)."""
        found = latest(self.out_dir) if self.strategy == "checkpoint" else None
        info = self.push(message, found[0] if found else None).result()
        for future, _ in self.queued:
            future.result()
        if info is None:
            raise UserError(f"the final push to {self.repo_id} failed (see the warning above); the run is saved in "
                            f"{self.out_dir}: push it with python -m hfgpt.push {self.out_dir} "
                            f"--hub_model_id={self.repo_id}")
        print(f"pushed {self.out_dir} to {self.repo_id}: {info.commit_url}")
        return info.commit_url
