"""A training run's parts, built once: accelerator, data, model, optimizer, batches; and one step.

    accelerator = make_accelerator(recipe)
    run = setup(recipe, accelerator, checkpoint=None)      # or the checkpoint folder being resumed
    loss, x, y = train_step(run, x, y, recipe.optim.grad_clip)

hfgpt.training.loop (python -m hfgpt.train) runs these in its loop; python -m hfgpt.bench train
times the same step.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from hfgpt.config import Recipe
from hfgpt.core.device import device_type, resolve_mixed_precision, should_compile
from hfgpt.core.errors import UserError
from hfgpt.data.batches import Batches, TokenShards, load_tokens, to_device
from hfgpt.data.prepare import dataset_dir, ensure_prepared, tokenizer_name
from hfgpt.data.tokenizer import load_tokenizer, model_tokenizer, vocabulary_mismatch
from hfgpt.model.attention import use_float32_attention
from hfgpt.model.gpt import (build_model, enable_checkpointing, lm_loss, load_model, pinned,
                             set_generation_defaults, zero_biases)
from hfgpt.model.lora import ADAPTER, add_lora, adapter_base, load_adapter
from hfgpt.training.mfu import flops_per_token, peak_flops
from hfgpt.training.optim import make_optimizer


@dataclass
class Run:
    """What setup() builds."""

    accelerator: Accelerator
    meta: dict
    tokenizer: object
    train_tokens: TokenShards
    val_tokens: TokenShards
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: Batches
    accum: int  # micro-batches per iteration on each process
    tokens_per_iter: int  # over all processes
    compiled: bool
    flops_per_token: float
    peak_flops: float | None  # None where the device's peak is unknown (MFU is then not reported)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.accelerator.unwrap_model(self.model).parameters())


def make_accelerator(recipe: Recipe, **options) -> Accelerator:
    dev = device_type(recipe.system.device)
    if dev == "cuda":  # TF32 matmuls: float32 range, tensor-core speed (as nanoGPT)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    accelerator = Accelerator(cpu=dev == "cpu", mixed_precision=resolve_mixed_precision(recipe.system.mixed_precision, dev),
                              **options)
    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if fsdp_asked and accelerator.distributed_type != DistributedType.FSDP and accelerator.is_main_process:
        print(f"note: accelerate runs FSDP on GPUs only; on {dev} this run is plain data parallel "
              f"({accelerator.distributed_type.value})")
    return accelerator


def make_model(recipe: Recipe, meta: dict, tokenizer, checkpoint: Path | None = None, say=print):
    """From scratch with the dataset's vocabulary, or loaded (a Hub id, a folder, the checkpoint
    being resumed; a LoRA checkpoint's base model) and checked against the tokenizer; then bias:
    false, gradient checkpointing and LoRA, in this order on the first run and on resume alike, so
    the optimizer holds the same tensors. `say` prints on the main process."""
    m = recipe.model
    if checkpoint is None and m.init_from == "scratch":
        model = build_model(m, vocab_size=meta["vocab_size"], eot_token_id=meta.get("eot_token_id"))
    else:
        if checkpoint is None:
            source = m.init_from
        elif m.lora_r:  # a LoRA checkpoint holds the adapter only: the base it was trained on is loaded again
            source = adapter_base(checkpoint / ADAPTER)
        else:
            source = str(checkpoint)
        model = load_model(source, m.block_size, m.dropout)
        check_vocabulary(recipe, meta, tokenizer, model, source)
        set_generation_defaults(model, m.block_size, meta.get("eot_token_id"))
        if not m.bias:  # as build_model does: zero and frozen from the first iteration, and again on resume
            total, non_zero = zero_biases(model)
            if non_zero and checkpoint is None:
                say(f"bias: false: zeroed and froze the {total} bias tensors of {m.init_from} ({non_zero} were not "
                    "zero; the LayerNorm ones too, so its outputs change from the first iteration)")
    if m.gradient_checkpointing:
        enable_checkpointing(model)
    if m.lora_r:
        model = add_lora(model, m, base=pinned(m.init_from) if checkpoint is None else source)
        if checkpoint is not None:
            load_adapter(model, checkpoint / ADAPTER)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        say(f"LoRA r={m.lora_r}: {trainable:,} trainable parameters of {sum(p.numel() for p in model.parameters()):,}")
    return model


def check_vocabulary(recipe: Recipe, meta: dict, tokenizer, model, source: str) -> None:
    """A loaded model must read the data's ids as the strings they stand for: the same vocabulary as
    the model's own tokenizer, or (a model folder without one) at least ids its embedding has."""
    own = model_tokenizer(source)
    if own is not None and (problem := vocabulary_mismatch(tokenizer, meta["tokenizer"], own, source, recipe.data.dataset)):
        raise UserError(problem)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(f"the {meta['tokenizer']} tokenizer of {recipe.data.dataset} has {len(tokenizer):,} ids but "
                        f"{source} embeds only {rows:,}: prepare the data with the model's own tokenizer "
                        f"(tokenizer: {source})")


def setup(recipe: Recipe, accelerator: Accelerator, checkpoint: Path | None = None) -> Run:
    """Data (prepared by the main process when needed), model, optimizer and batches."""
    r, t = recipe, recipe.train
    r.data.tokenizer = tokenizer_name(r)  # resolved once: recipe.yaml, the card and resume name it
    with accelerator.main_process_first():  # the others wait while the main process prepares
        meta = ensure_prepared(r)
    folder = dataset_dir(r)
    tokenizer = load_tokenizer(str(folder / "tokenizer"))
    train_tokens = load_tokens(folder, meta, "train", r.model.block_size)
    val_tokens = load_tokens(folder, meta, "val", r.model.block_size)

    # the global batch is the recipe's whatever the number of processes: each does its share
    world = accelerator.num_processes
    if t.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps={t.gradient_accumulation_steps} is not divisible by the {world} "
                        f"processes: make it a multiple of {world}")

    set_seed(t.seed)  # identical initial weights on every process
    model = make_model(r, meta, tokenizer, checkpoint, say=accelerator.print)
    torch.manual_seed(t.seed + accelerator.process_index)  # different dropout masks per process
    use_float32_attention(model, accelerator.device.type, accelerator.mixed_precision)
    per_token = flops_per_token(model, r.model.block_size)
    optimizer = make_optimizer(model, r.optim, accelerator.device.type)
    compiled = should_compile(r.system.compile, accelerator.device.type)
    if compiled:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()  # from_pretrained returns models in eval mode: dropout would be off
    batches = Batches(train_tokens, r.model.block_size, t.batch_size, seed=t.seed + accelerator.process_index)
    return Run(accelerator, meta, tokenizer, train_tokens, val_tokens, model, optimizer, batches,
               accum=t.gradient_accumulation_steps // world,
               tokens_per_iter=t.gradient_accumulation_steps * t.batch_size * r.model.block_size, compiled=compiled,
               flops_per_token=per_token, peak_flops=peak_flops(accelerator.device.type, accelerator.mixed_precision))


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, grad_clip: float):
    """One iteration: forward and backward over `accum` micro-batches (gradients sync across
    processes on the last one only), clip, update. Returns the iteration's mean loss (on the
    device, not synced) and the next batch, fetched while the device works."""
    accelerator, model, device = run.accelerator, run.model, run.accelerator.device
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(run.accum):
        last = micro_step == run.accum - 1
        with nullcontext() if last else accelerator.no_sync(model):
            loss = lm_loss(model, *to_device((x, y), device)) / run.accum
            x, y = run.batches.next_batch()
            accelerator.backward(loss)
        loss_sum += loss.detach()
    if grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum, x, y


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
