"""A time budget as the recipe (time_budget: 2m): a plan for every key the user did not set, made by
measuring this machine, and a deadline the training loop keeps.

    name_budget_run(recipe)                 # no dataset or out_dir given: named after the source
    plan = plan_budget(recipe, meta, device, precision, say=print)   # fills the recipe's unset planned keys
    restore_plan(recipe, saved_recipe)      # init_from=resume: the keys the run was planned with
    deadline = Deadline(recipe, state, 2.5) # in the loop, at each log line: deadline.update(state, end, lr, 0.4, print)

The budget is the whole process's wall time, from its start (imports and preparing the data
included) to its exit, the final evaluation and saving included. The plan (hfgpt.training.rules
holds the rules and the measurements behind them): the time left for training, less what the
final evaluation and saving will take; for each candidate shape (small to large) a few timed
training steps on this machine, so each candidate's number of iterations in that time is known;
the shape whose predicted loss after those iterations is lowest; then the batch, learning rates,
schedule (warmup-stable-decay, so that a run cut short has decayed), dropout and weight decay when
the run would see the text many times. The loop checks the pace at each log line and, if this
machine turns out slower (other work started), ends earlier with the decay moved up: the run stops
on time with a decayed learning rate and a saved model, and says so.
"""

import math
import os
import time
from dataclasses import dataclass, field

import torch

from hfgpt.config import Recipe
from hfgpt.config.recipe import parse_duration, planned_keys
from hfgpt.core.errors import UserError
from hfgpt.training import rules

MEASURE_STEPS, WARMUP_STEPS = 4, 2  # timed and untimed steps per candidate shape
MEASURE_SHARE = 0.05  # of the budget, at most, spent measuring candidates (one more may be measured past it)


_STARTED: list[float] = []  # when the run started: start_clock()


def process_start() -> float:
    """When this process started."""
    import psutil  # installed with accelerate

    return psutil.Process(os.getpid()).create_time()


def start_clock(started: float) -> None:
    """The moment the budget counts from: the process's start for python -m hfgpt.train (imports
    included), the call for train.main([...]) inside a longer-lived process."""
    _STARTED[:] = [started]


def clock_start() -> float:
    return _STARTED[0] if _STARTED else process_start()


@dataclass
class Plan:
    values: dict = field(default_factory=dict)  # key -> value the plan set
    why: list[str] = field(default_factory=list)
    measured: list[dict] = field(default_factory=list)  # per candidate: shape, s_per_iter, iterations, predicted loss

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.values.items())
        return "\n".join([f"plan: {shown}", *(f"  {line}" for line in self.why)])


def set_values(recipe: Recipe, values: dict) -> dict:
    """Set each planned key the user did not give; returns what was set."""
    keys, done = set(planned_keys()), {}
    for key, value in values.items():
        if key in keys and key not in recipe.given:
            section = recipe.__dict__[next(s for s in ("data", "model", "optim", "train") if hasattr(getattr(recipe, s), key))]
            setattr(section, key, value)
            done[key] = value
    return done


def name_budget_run(recipe: Recipe) -> None:
    """What a time-budget run decides before its data is prepared: its block_size (unless set), and,
    given only its source (python -m hfgpt.train --source=notes.txt --time_budget=2m), its names
    after it: data/notes/ and out-notes/, unless dataset or out_dir are set."""
    if recipe.train.time_budget is None:
        return
    if recipe.model.init_from in ("scratch", "auto"):
        set_values(recipe, {"block_size": rules.block_size(parse_duration(recipe.train.time_budget))})
    if "dataset" not in recipe.given and isinstance(recipe.data.source, str):
        set_values(recipe, {"dataset": rules.dataset_name(recipe.data.source)})
    if "out_dir" not in recipe.given:
        set_values(recipe, {"out_dir": f"out-{recipe.data.dataset}"})


def restore_plan(recipe: Recipe, saved: dict) -> None:
    """A resumed budget run continues the plan it started with: every planned key the command does
    not set comes from the checkpoint's recipe."""
    set_values(recipe, {k: v for k, v in saved.items() if k in planned_keys()})


def time_step(m, vocab_size: int, batch_size: int, device: torch.device, precision: str) -> float:
    """Seconds of one training step of a new model of `m`'s shape on this device (forward, backward,
    clip and update, as train_step does on one process), the median of MEASURE_STEPS after WARMUP_STEPS."""
    from hfgpt.config import OptimConfig
    from hfgpt.model.attention import use_training_attention
    from hfgpt.model.gpt import NextTokenLoss, build_model
    from hfgpt.training.optim import make_optimizer

    with torch.random.fork_rng(devices=[]):
        model = build_model(m, vocab_size=vocab_size, eot_token_id=None).to(device).train()
        use_training_attention(model, m.block_size)
        loss_of = NextTokenLoss(model)
        optimizer = make_optimizer(model, OptimConfig(optimizer="muon"), device.type)
        x = torch.randint(0, vocab_size, (batch_size, m.block_size + 1), device=device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        times = []
        for i in range(WARMUP_STEPS + MEASURE_STEPS):
            sync()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_of(x[:, :-1], x[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()
            if i >= WARMUP_STEPS:
                times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _length(recipe: Recipe, meta: dict, step_s: float, batch: int, block: int) -> tuple[int, float, float | None]:
    """Iterations that fit the budget left at `step_s` each, the passes over the text they make,
    and the dropout the rules give for those passes (None: the recipe sets dropout)."""
    t, given = recipe.train, recipe.given
    left = parse_duration(t.time_budget) - (time.time() - clock_start())
    iterations = t.max_iters if "max_iters" in given else rules.iterations(left, step_s)
    epochs = iterations * batch * block / max(meta["train_tokens"], 1)
    return iterations, epochs, None if "dropout" in given else rules.regularization(epochs)["dropout"]


def plan_budget(recipe: Recipe, meta: dict, device: torch.device, precision: str, say=print) -> Plan:
    """Measure, choose, and set every planned key the recipe does not set (see the module docstring)."""
    import dataclasses

    t, m = recipe.train, recipe.model
    budget = parse_duration(t.time_budget)
    left = budget - (time.time() - clock_start())
    given = recipe.given
    if left <= 0:
        raise UserError(f"time_budget={t.time_budget} was spent before training could start ({budget - left:.0f} s on start-up "
                        "and preparing the data): give a longer budget")
    plan = Plan()
    if m.init_from not in ("scratch", "auto"):
        raise UserError(f"time_budget plans a model trained from scratch, but init_from={m.init_from}: set max_iters "
                        "yourself for a fine-tune or a resume of a run that had no budget")
    block = m.block_size  # set before the data was prepared (name_budget_run)
    batch = t.batch_size if "batch_size" in given else rules.batch_rows(block)
    measure_until = time.time() + MEASURE_SHARE * budget
    best = None
    for n_layer, n_embd in rules.candidates(device.type):
        shape = {"n_layer": n_layer, "n_embd": n_embd, "n_head": rules.heads(n_embd)}
        shape = {k: (getattr(m, k) if k in given else v) for k, v in shape.items()}
        if shape["n_embd"] % shape["n_head"] or any(c["n_layer"] == shape["n_layer"] and c["n_embd"] == shape["n_embd"]
                                                     for c in plan.measured):
            continue
        trial = dataclasses.replace(m, **shape, block_size=block)
        step_s = time_step(trial, meta["vocab_size"], batch, device, precision)
        iterations = rules.iterations(budget - (time.time() - clock_start()), step_s)
        tokens = iterations * batch * block
        loss = rules.predicted_loss(rules.non_embedding_params(trial), tokens, meta["train_tokens"], meta["tokenizer"])
        plan.measured.append({**shape, "s_per_iter": round(step_s, 4), "iterations": iterations, "tokens": tokens,
                              "predicted_loss": round(loss, 4)})
        if best is None or loss < best[0]:
            best = (loss, shape, step_s)
        elif loss > best[0] + rules.GIVE_UP or time.time() > measure_until:
            break  # larger models only get worse from here (or measuring has cost its share)
        if all(k in given for k in ("n_layer", "n_embd", "n_head")):
            break
    if best is None:
        raise UserError(f"time_budget={t.time_budget}: no model shape fits n_head={m.n_head}, n_embd={m.n_embd}")
    _, shape, step_s = best
    iterations, epochs, dropout = _length(recipe, meta, step_s, batch, block)
    if dropout is not None and dropout != m.dropout:
        # dropout costs time on its own (a CPU step of the fast recipe's shape: 54 -> 75 ms): the
        # chosen shape timed again with it, so that the iterations fit the budget
        trial = dataclasses.replace(m, **shape, block_size=block, dropout=dropout)
        step_s = time_step(trial, meta["vocab_size"], batch, device, precision)
        iterations, epochs, _ = _length(recipe, meta, step_s, batch, block)
    tokens = iterations * batch * block
    values = {"architecture": rules.ARCHITECTURE, **shape, "block_size": block, "batch_size": batch,
              "gradient_accumulation_steps": 1, "bias": False, **rules.optimizer(iterations, shape["n_embd"]),
              **({} if dropout is None else {"dropout": dropout}), "max_iters": iterations, "lr_decay_iters": iterations,
              "eval_interval": 10 * iterations, "eval_iters": rules.eval_batches(iterations),  # at the start and end only
              "log_interval": max(1, iterations // 20),
              "always_save_checkpoint": False}
    plan.values = set_values(recipe, values)
    shown = ", ".join(f"{c['n_layer']}x{c['n_embd']}: {c['s_per_iter'] * 1000:.0f} ms/iter -> {c['predicted_loss']:.3f}"
                      for c in plan.measured)
    plan.why = [f"time_budget {t.time_budget} = {budget:.0f} s, {left:.0f} s left at the plan; {meta['train_tokens']:,} "
                f"training tokens ({meta['tokenizer']} tokenizer, {meta['vocab_size']:,} ids)",
                f"measured on this machine (candidate: time per iteration -> predicted loss): {shown}",
                f"chosen: {recipe.model.n_layer} x {recipe.model.n_embd}, {iterations:,} iterations of {batch} x {block} "
                f"tokens = {tokens:,} tokens ({epochs:.1f} passes over the text), expected to end at "
                f"{time.strftime('%H:%M:%S', time.localtime(clock_start() + budget))}",
                "set yourself any key to keep it; the plan is in out_dir/recipe.yaml (resume continues it)"]
    say(plan.describe())
    return plan


class Deadline:
    """The loop's clock for a time budget: the last iteration that still ends within it."""

    def __init__(self, recipe: Recipe, state, reserve_s: float, on_cpu: bool = True):
        self.budget = parse_duration(recipe.train.time_budget)
        self.started = clock_start()
        self.spent_before = state.budget_spent_s  # by earlier processes of a resumed run
        self.reserve, self.on_cpu = reserve_s, on_cpu
        self.may_extend = "max_iters" not in recipe.given  # the user's max_iters is a most, never raised
        self.paced_from = None  # (time, iteration) of the first log line: the pace is measured from there,
        self.said = False       # past the first evaluation and the first iterations' warm-up; then the end said

    def spent(self) -> float:
        return self.spent_before + time.time() - self.started

    def update(self, state, end: int, lr: float, decay_fraction: float, say) -> None:
        """Move the run's last iteration (state.end) to what the pace so far fits in the budget:
        earlier when this machine runs slower than planned, then the learning rate decays from
        where it is to min_lr at the new end (state.decay_from) if the schedule's own decay would
        have begun already; later while the learning rate is still at its peak (the stable phase of
        warmup-stable-decay, the same whatever the end) when it runs faster."""
        state.budget_spent_s = self.spent()
        if self.paced_from is None:
            self.paced_from = (time.time(), state.iter, time.process_time())
            return
        since, first, cpu_since = self.paced_from
        if state.iter - first < 2:
            return
        wall = time.time() - since
        per_iter = wall / (state.iter - first)
        # the share of its threads' cores this process gets (other work takes the rest): the final
        # evaluation and saving take as much longer as the iterations do
        share = min(1.0, max(0.1, (time.process_time() - cpu_since) / (wall * torch.get_num_threads()))) if self.on_cpu else 1.0
        left = self.budget - self.spent() - self.reserve / share
        fits = state.iter + max(1, math.floor(left * rules.SAFETY / per_iter))
        decaying = state.decay_from is not None or state.iter >= (1 - decay_fraction) * end
        if fits < end and (fits < 0.99 * end or decaying):  # behind: end earlier (within 1% waits while stable)
            if self.said is False or fits < 0.95 * self.said:
                say(f"time_budget: this machine runs slower than planned ({per_iter * 1000:.1f} ms/iter): ending at "
                    f"iteration {fits} instead of {end} to stay within {self.budget:.0f} s, the learning rate decayed by then")
                self.said = fits
            state.end = fits
            if decaying or state.iter >= (1 - decay_fraction) * fits:
                state.decay_from = [state.iter, lr]
        elif self.may_extend and not decaying and fits > 1.03 * end:  # ahead, still at the peak: more iterations
            state.end = fits
