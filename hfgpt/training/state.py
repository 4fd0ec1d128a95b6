"""The counters of a run, in one object that a checkpoint saves whole and a resume restores whole.

    state = LoopState(init_from="scratch")
    state.iter += 1; state.tokens_seen += tokens_per_iter
    state.evaluated(train_loss=2.1, val_loss=2.2)      # an evaluation at state.iter
    json.dumps(state.to_json())                        # the fields of a checkpoint's state.json
    state = LoopState.from_json(json.loads(text))
"""

import dataclasses
import math
from dataclasses import dataclass

from hfgpt.core.formats import upgrade_state


@dataclass
class LoopState:
    iter: int = 0
    """Iterations (optimizer steps) done."""
    tokens_seen: int = 0
    """Training tokens consumed, over all processes."""
    best_val_loss: float | None = None
    """Lowest val loss estimate so far (None before the first evaluation)."""
    init_from: str = "scratch"
    """Where the weights came from at iteration 0 (a resumed run keeps its origin)."""
    eval_iter: int | None = None
    """Iteration of the last evaluation; train_loss and val_loss are its estimates."""
    train_loss: float | None = None
    val_loss: float | None = None
    end: int | None = None
    """The last iteration when a time budget moved it before max_iters (a machine slower than planned)."""
    decay_from: list | None = None
    """[iteration, learning rate]: a time budget's end moved up into the decay: from there the rate falls
    linearly to min_lr at end."""
    budget_spent_s: float = 0.0
    """Seconds of the time budget spent (by this process and the ones a resume continues)."""

    def last_iter(self, max_iters: int) -> int:
        return self.end if self.end is not None else max_iters
    skipped_steps: int = 0
    """Optimizer steps skipped by fp16's loss scaler (gradients with an inf or NaN), over the whole run."""

    def evaluated(self, train_loss: float, val_loss: float) -> bool:
        """Record an evaluation at this iteration; True when val improved on the best so far."""
        improved = self.best_val_loss is None or val_loss < self.best_val_loss
        self.eval_iter, self.train_loss, self.val_loss = self.iter, train_loss, val_loss
        if improved and math.isfinite(val_loss):
            self.best_val_loss = val_loss
        return improved

    def losses_now(self) -> dict:
        """The evaluation of this very iteration ({} when the model changed since the last one)."""
        if self.eval_iter != self.iter:
            return {"train_loss": None, "val_loss": None}
        return {"train_loss": self.train_loss, "val_loss": self.val_loss}

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), **self.losses_now()}

    @classmethod
    def from_json(cls, saved: dict) -> "LoopState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in upgrade_state(saved).items() if k in names})
