"""The training loop: nanoGPT's train.py loop around Accelerate, top to bottom.

    result = train(recipe)          # python -m hfgpt.train RECIPE (hfgpt/train.py) calls this

Each iteration: set the learning rate; every eval_interval iterations evaluate, save out_dir when
val improves (always, with always_save_checkpoint) and write a resumable checkpoint (out_dir's
model files are the checkpoint's, written once: see evaluate_and_save); stop at
max_iters or on SIGINT/SIGTERM/SIGUSR1 (after a checkpoint; with several processes the signal is looked at
every log_interval iterations); otherwise one optimizer step over
gradient_accumulation_steps micro-batches, then log every log_interval iterations. The run's
counters are one LoopState, saved in every checkpoint and restored whole by a resume. The run
holds out_dir for its lifetime (hfgpt.training.out_dir: a lock; never over another run's results).
"""

import copy
import math
from pathlib import Path

import torch

from hfgpt.config import Recipe
from hfgpt.core.errors import UserError
from hfgpt.core.files import disk_space, read_json
from hfgpt.core.layout import FACTS
from hfgpt.hub.card import write_card
from hfgpt.hub.download import resume_from_hub
from hfgpt.hub.push import Pusher
from hfgpt.training import rules
from hfgpt.training.budget import Deadline, name_budget_run
from hfgpt.model.gpt import causal_lm
from hfgpt.model.lora import is_lora
from hfgpt.training.checkpoint import after_full_disk, checkpoint_path, save_checkpoint, save_model_folder
from hfgpt.training.resume import restore, resume_point, set_aside_newer
from hfgpt.training.evaluate import card_samples, estimate_loss, eval_samples, folder_samples
from hfgpt.training.optim import set_lr
from hfgpt.training.out_dir import claim
from hfgpt.training.plot import plots_finished
from hfgpt.training.progress import Progress
from hfgpt.training.run import Run, make_accelerator, setup, train_step
from hfgpt.core.signals import StopSignal, catch_early, next_step, signal_name
from hfgpt.training.state import LoopState
from hfgpt.training.strategies import SHARDED
from hfgpt.training.trackers import start_trackers, tracker_options


def train(recipe: Recipe) -> dict:
    """Run the recipe to max_iters (or until a signal); returns the last evaluation, the best val
    loss, the iterations done, the signal that stopped the run (0 if none) and the out_dir written.

    `recipe` is left as given. The run resolves a copy of its own, each value once, in this order
    (what recipe.yaml, the card, the trackers and a later resume then read):
      1. name_budget_run   time_budget: block_size; without a dataset or out_dir, names from the source
      2. claim             init_from: auto -> resume, or the start it names
      3. resume_from_hub   resume_from: user/name -> the checkpoint downloaded into out_dir
      4. resume_point      resume: the tokenizer the checkpoint's data was prepared with
      5. setup             time_budget: the planned shape, batch, optimizer and iterations; the
                           loop then records the data's tokenizer name (char, gpt2, a path)
      6. loop, on resume   init_from and resume_from: what the resumed run started from"""
    r = copy.deepcopy(recipe)
    name_budget_run(r)
    catch_early()  # a cluster's SIGUSR1 during start-up stops the run at its first iteration, with a checkpoint
    accelerator = make_accelerator(r, **tracker_options(r))
    out_dir = Path(r.train.out_dir)
    # out_dir is this run's until it ends, with loss.png's last redraw done
    with claim(r, accelerator), disk_space(out_dir, then=after_full_disk(out_dir)), plots_finished():
        return {**loop(r, accelerator), "out_dir": str(out_dir)}


def loop(r: Recipe, accelerator) -> dict:
    """train() with out_dir held."""
    t = r.train
    pusher = Pusher.for_recipe(r) if accelerator.is_main_process and r.hub.push_to_hub else None  # a bad token stops here
    resume_from_hub(accelerator, r)  # resume_from=user/name: download its last-checkpoint/ first
    resume = resume_point(r, accelerator)  # None unless init_from=resume
    run = setup(r, accelerator, checkpoint=resume)
    r.data.tokenizer = run.data.tokenizer  # resolved once, by the data spec: recipe.yaml, the card and resume name it
    state = (restore(accelerator, run.model, run.optimizer, run.batches, resume) if resume
             else LoopState(init_from=r.model.init_from))
    if resume and run.skipped is not None:
        run.skipped.fill_(state.skipped_steps)  # fp16's skipped steps before the resume
    if resume:  # recipe.yaml, the card and the trackers say what the run started from, not "resume"
        r.model.init_from, r.train.resume_from = state.init_from, None
    if resume and not t.eval_only and accelerator.is_main_process:
        set_aside_newer(t.out_dir, state.iter)  # a rewound run: the newer checkpoints are never "latest" again
    start_trackers(accelerator, r)
    progress = Progress(accelerator, r, run, state, resumed=resume is not None)
    progress.start()
    watch = LossWatch(accelerator.device, Path(t.out_dir))
    resumed_at, saved_at, stopped = (state.iter if resume else None), None, 0

    deadline = Deadline(r, state, rules.AFTER_S, on_cpu=accelerator.device.type == "cpu") if t.time_budget else None
    window = run.batches.next_window()
    with StopSignal(every=t.log_interval) as stop:
        while True:
            end = state.last_iter(t.max_iters)
            lr = set_lr(run.optimizer, state.iter, r.optim, lr_decay_iters=state.end, decay_from=state.decay_from)

            # evaluate; save the model when val improves (or always) and a resumable checkpoint
            if (state.iter % t.eval_interval == 0 or state.iter == end) and (state.iter != resumed_at or t.eval_only):
                saved_at = evaluate_and_save(run, state, r, progress, watch, pusher) or saved_at
            if t.eval_only or state.iter >= end:
                break
            if stopped := stop.received(accelerator, state.iter):
                watch.check(state.iter)
                if saved_at != state.iter:
                    saved_at = checkpoint(run, state, r, progress)
                progress.say(f"{signal_name(stopped)}: saved {checkpoint_path(t.out_dir, state.iter)}; {next_step(stopped)}")
                break

            # forward, backward and update; the next batch is fetched while the device works
            loss, window = train_step(run, window, r.optim.grad_clip)
            watch.record(loss, state.iter)
            state.iter += 1
            state.tokens_seen += run.tokens_per_iter

            if state.iter % t.log_interval == 0 or state.iter == end:
                watch.check(state.iter)
                count_skipped(run, state)
                progress.log(state, loss.item(), lr)
                if deadline is not None:  # a time budget: the end moves with the pace
                    deadline.update(state, end, lr, r.optim.decay_fraction, progress.say)
            progress.update()

    progress.close()
    accelerator.wait_for_everyone()
    if not stopped:
        finish_card(run, r)
        progress.summary(state)
    accelerator.end_training()
    if pusher:  # a failed push after a signal is reported, and the signal's exit code kept
        stopped = pusher.finish(f"end of training: iter {state.iter}" if not stopped else f"stopped at iter {state.iter}",
                                stopped)
    last_eval = {"iter": state.eval_iter, "train_loss": state.train_loss, "val_loss": state.val_loss}
    return {**(last_eval if state.eval_iter is not None else {}), "best_val_loss": state.best_val_loss,
            "iters": state.iter, "signal": stopped}


def evaluate_and_save(run: Run, state: LoopState, r: Recipe, progress: Progress, watch: "LossWatch",
                      pusher: Pusher | None) -> int | None:
    """Estimate train and val loss, generate the evaluation's samples and log them; past iteration 0
    (and unless eval_only) save out_dir when val improved, or always with always_save_checkpoint,
    then write a checkpoint. Returns the iteration checkpointed, if any."""
    accelerator, out_dir = run.accelerator, Path(r.train.out_dir)
    losses = estimate_loss(run.model, {"train": run.train_tokens, "val": run.val_tokens}, r, accelerator)
    watch.check(state.iter, losses)
    improved = state.evaluated(losses["train"], losses["val"])
    samples = eval_samples(accelerator, run.model, run.tokenizer, r.log, seed=r.train.seed + state.iter)
    progress.evaluation(state, samples)
    progress.restart_clock()
    if state.iter == 0 or r.train.eval_only:
        return None
    model_saved = improved or r.train.always_save_checkpoint
    # out_dir's model files are the checkpoint's, written once and hard-linked (a LoRA checkpoint holds
    # the adapter alone: out_dir's merged model is written for it); out_dir's card lists the files it wrote
    lora = is_lora(causal_lm(run.model))
    facts = {**state.to_json(), "samples": samples}
    if model_saved and lora:
        save_model_folder(accelerator, run.model, run.tokenizer, out_dir, r, facts=facts)
    folder = checkpoint(run, state, r, progress, samples, model_to=out_dir if model_saved and not lora else None,
                        model_facts=facts)
    if model_saved:
        progress.say(f"saved {out_dir} (val loss {state.val_loss:.4f})")
    if pusher:
        pusher.after_save(state.iter, state.val_loss, model_saved, folder)
    progress.restart_clock()
    return state.iter


def finish_card(run: Run, r: Recipe) -> None:
    """out_dir's model card once more at the end, from its files: loss.png is drawn in the background,
    after the card of a save may have been rendered. With eval_samples None on a GPU (card_samples)
    it also gets its text now, generated once from the model saved there (the evaluations made none)."""
    accelerator, out_dir = run.accelerator, Path(r.train.out_dir)
    if r.train.eval_only or not accelerator.is_main_process or not (out_dir / FACTS).is_file():
        return
    facts = read_json(out_dir / FACTS)
    n = card_samples(r.log, accelerator.device.type)
    if n and accelerator.distributed_type not in SHARDED and (out_dir / "config.json").is_file():
        facts["samples"] = folder_samples(out_dir, r.log, n, seed=r.train.seed + facts.get("iter", 0),
                                          device=accelerator.device.type)
    write_card(out_dir, facts)


def checkpoint(run: Run, state: LoopState, r: Recipe, progress: Progress, samples: list[str] = (),
               model_to: Path | None = None, model_facts: dict | None = None) -> Path:
    """A resumable checkpoint of this iteration, with its model card; metrics.jsonl's rows up to it
    are on disk before it is published. model_to: out_dir, which gets its model files first (and
    training.json from model_facts, and its card)."""
    progress.metrics.sync()
    count_skipped(run, state)
    folder = save_checkpoint(run.accelerator, run.model, run.optimizer, run.batches, run.tokenizer, r, state,
                             shared=run.shared_storage, model_to=model_to, model_facts=model_facts)
    if run.accelerator.is_main_process:
        write_card(folder, {**state.to_json(), "samples": list(samples)})
    return folder


def count_skipped(run: Run, state: LoopState) -> None:
    """state.skipped_steps from the device's count of fp16's skipped steps (a sync: at log lines and saves)."""
    skipped = run.skipped_steps()
    if skipped is not None:
        state.skipped_steps = skipped


class LossWatch:
    """Notices a loss that is NaN or infinite without a device sync per iteration: the first bad
    iteration is kept on the device and checked when the loop syncs anyway (log lines, saves)."""

    def __init__(self, device: torch.device, out_dir: Path):
        self.first_bad = torch.tensor(-1, device=device)
        self.out_dir = out_dir

    def record(self, loss: torch.Tensor, iter_num: int) -> None:
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss), iter_num, self.first_bad)

    def check(self, iter_num: int, losses: dict | None = None) -> None:
        bad = int(self.first_bad.item())
        if bad >= 0 or (losses and not all(math.isfinite(v) for v in losses.values())):
            where = f"iteration {bad}" if bad >= 0 else f"the evaluation at iteration {iter_num}"
            raise UserError(f"the loss became NaN or infinite at {where}; stopped without saving over the last good "
                            f"checkpoint in {self.out_dir / 'checkpoints'}: lower learning_rate (or use bf16 instead of "
                            "fp16) and continue with --init_from=resume")
