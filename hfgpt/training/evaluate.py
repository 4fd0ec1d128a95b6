"""Evaluation during training: loss estimates over fixed batches, and generated samples.

    losses = estimate_loss(model, {"train": train_tokens, "val": val_tokens}, recipe, accelerator)
    texts = eval_samples(accelerator, model, tokenizer, recipe.log, seed=1337)

`model` is the run's prepared model: model(x, y) is the loss (NextTokenLoss, hfgpt.model.gpt).
"""

import torch
from accelerate import Accelerator
from transformers import pipeline

from hfgpt.config import LogConfig, Recipe
from hfgpt.core.device import forked_rng
from hfgpt.data.batches import Batches, to_device
from hfgpt.model.generate import generate
from hfgpt.model.gpt import causal_lm
from hfgpt.training.strategies import SHARDED


@torch.no_grad()
def estimate_loss(model, splits: dict, recipe: Recipe, accelerator: Accelerator) -> dict[str, float]:
    """Mean loss over eval_iters batches per split, averaged over processes.

    Every evaluation reads the same windows (a generator seeded afresh), so successive
    estimates differ only because the model changed.
    """
    t = recipe.train
    model.eval()
    out = {}
    for split, tokens in splits.items():
        batches = Batches(tokens, recipe.model.block_size, t.batch_size, seed=t.seed + 7919 * (accelerator.process_index + 1))
        losses = torch.zeros(t.eval_iters, device=accelerator.device)
        for k in range(t.eval_iters):
            losses[k] = model(*to_device(batches.next_window(), accelerator.device))
        out[split] = accelerator.reduce(losses.mean(), reduction="mean").item()
    model.train()
    return out


@torch.no_grad()
def eval_samples(accelerator, model, tokenizer, log: LogConfig, seed: int) -> list[str]:
    """The texts generated at an evaluation during training (main process; [] elsewhere).

    log.eval_samples of them (None: 1 on a GPU, 0 on the CPU), from log.sample_start, with the
    model's sampling defaults. The random generator is forked and seeded, so the samples are
    reproducible and the training run's own random stream (dropout, resume) is untouched."""
    n = log.eval_samples if log.eval_samples is not None else int(accelerator.device.type != "cpu")
    if n == 0 or not accelerator.is_main_process:
        return []
    if accelerator.distributed_type in SHARDED:
        return []  # the weights are sharded across processes: one process cannot generate alone
    net = causal_lm(model)  # the plain causal LM: not DDP, not the compiled wrapper, not NextTokenLoss
    with forked_rng(net.device):
        torch.manual_seed(seed)
        net.eval()
        try:
            pipe = pipeline("text-generation", model=net, tokenizer=tokenizer, device=net.device)
            return generate(pipe, log.sample_start, n, log.sample_max_new_tokens,
                            net.generation_config.temperature or 1.0, net.generation_config.top_k)
        finally:
            net.train()


