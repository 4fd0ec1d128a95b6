"""Evaluation during training: loss estimates over fixed batches, and generated samples.

    losses = estimate_loss(model, {"train": train_tokens, "val": val_tokens}, recipe, accelerator)
    texts = eval_samples(accelerator, model, tokenizer, recipe.log, seed=1337)   # recipe.log.eval_samples of them
    texts = folder_samples("out", recipe.log, n=1, seed=1337, device="cuda")   # from a saved model folder

`model` is the run's prepared model: model(x, y) is the loss (NextTokenLoss, hfgpt.model.gpt).
"""

import torch
from accelerate import Accelerator
from transformers import pipeline

from hfgpt.config import LogConfig, Recipe
from hfgpt.core.device import forked_rng
from hfgpt.data.batches import batches_for, to_device
from hfgpt.model.generate import generate, load_pipeline
from hfgpt.model.gpt import causal_lm
from hfgpt.training.strategies import SHARDED


@torch.no_grad()
def estimate_loss(model, splits: dict, recipe: Recipe, accelerator: Accelerator) -> dict[str, float]:
    """Mean loss over eval_iters batches per split, averaged over processes.

    Every evaluation reads the same windows (batches_for's "eval" stream, seeded afresh), so
    successive estimates differ only because the model changed.
    """
    t = recipe.train
    model.eval()
    out = {}
    for split, tokens in splits.items():
        batches = batches_for(tokens, recipe.model.block_size, t.batch_size, t.seed, accelerator.process_index, "eval")
        losses = torch.zeros(t.eval_iters, device=accelerator.device)
        for k in range(t.eval_iters):
            losses[k] = model(*to_device(batches.next_window(), accelerator.device))
        out[split] = accelerator.reduce(losses.mean(), reduction="mean").item()
    model.train()
    return out


def card_samples(log: LogConfig, device_type: str) -> int:
    """Texts generated at the end of the run for out_dir's model card: with eval_samples None, one on
    a GPU (none on the CPU, where generating slows small runs); with eval_samples set, none (the
    evaluations' samples are in the card already)."""
    return int(device_type != "cpu") if log.eval_samples is None else 0


@torch.no_grad()
def eval_samples(accelerator, model, tokenizer, log: LogConfig, seed: int) -> list[str]:
    """The texts generated at an evaluation during training (main process; [] elsewhere):
    log.eval_samples of them (None: none, see card_samples), from log.sample_start, with the model's
    sampling defaults."""
    n = log.eval_samples or 0
    if n == 0 or not accelerator.is_main_process:
        return []
    if accelerator.distributed_type in SHARDED:
        return []  # the weights are sharded across processes: one process cannot generate alone
    net = causal_lm(model)  # the plain causal LM: not DDP, not the compiled wrapper, not NextTokenLoss
    training = net.training
    net.eval()
    try:
        return sample_texts(pipeline("text-generation", model=net, tokenizer=tokenizer, device=net.device), log, n, seed)
    finally:
        net.train(training)


def sample_texts(pipe, log: LogConfig, n: int, seed: int) -> list[str]:
    """n texts from log.sample_start with the model's sampling defaults. The random generator is
    forked and seeded, so the samples are reproducible and the training run's own random stream
    (dropout, resume) is untouched."""
    net = pipe.model
    with forked_rng(net.device):
        torch.manual_seed(seed)
        return generate(pipe, log.sample_start, n, log.sample_max_new_tokens,
                        net.generation_config.temperature or 1.0, net.generation_config.top_k)


def folder_samples(folder, log: LogConfig, n: int, seed: int, device: str) -> list[str]:
    """n texts from the model saved in `folder` (as python -m hfgpt.sample loads it), on `device`."""
    with torch.no_grad():
        return sample_texts(load_pipeline(str(folder), device), log, n, seed)
