"""A training run's parts, built once: accelerator, data, model, optimizer, batches; and one step.

    accelerator = make_accelerator(recipe)
    run = setup(recipe, accelerator, checkpoint=None)      # or the checkpoint folder being resumed
    loss, window = train_step(run, window, recipe.optim.grad_clip)   # window: run.batches.next_window()
    step = stepper(run, recipe.optim.grad_clip); loss = step()        # the same, the window carried inside

hfgpt.training.loop (python -m hfgpt.train) runs these in its loop; python -m hfgpt.bench train
times the same step.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from hfgpt.config import Recipe
from hfgpt.core.device import available_memory, cpu_threads, device_type, resolve_mixed_precision, should_compile
from hfgpt.core.errors import UserError
from hfgpt.data.batches import Batches, TokenShards, batches_for, load_tokens, to_device
from hfgpt.data.prepare import prepared
from hfgpt.data.spec import DataSpec, data_spec
from hfgpt.data.tokenizer import load_tokenizer, model_tokenizer, vocabulary_mismatch
from hfgpt.model.attention import use_training_attention
from hfgpt.model.generate import unknown_characters
from hfgpt.model.gpt import (NextTokenLoss, build_model, causal_lm, enable_checkpointing, load_model,
                             pad_in_generation_config, pinned, set_generation_defaults, zero_biases)
from hfgpt.model.lora import ADAPTER, add_lora, adapter_base, load_adapter
from hfgpt.training.mfu import flops_per_token, peak_flops
from hfgpt.training.optim import make_optimizer
from hfgpt.training.strategies import (SHARDED, compile_blocks, fill_deepspeed_config, reduce_in_float32, set_wrap_unit,
                                      shared_storage)


@dataclass
class Run:
    """What setup() builds."""

    accelerator: Accelerator
    meta: dict
    tokenizer: object
    train_tokens: TokenShards
    val_tokens: TokenShards
    model: torch.nn.Module  # NextTokenLoss(the causal LM), compiled and prepared: model(x, y) -> loss
    optimizer: torch.optim.Optimizer
    batches: Batches
    accum: int  # micro-batches per iteration on each process
    tokens_per_iter: int  # over all processes
    compiled: bool
    flops_per_token: float
    peak_flops: float | None  # None where the device's peak is unknown (MFU is then not reported)
    shared_storage: bool = True  # out_dir is seen by every machine (else each writes its own checkpoints)
    data: DataSpec | None = None  # what the data stage read, spec.tokenizer the resolved name (None: no data, a bench)
    skipped: torch.Tensor | None = None  # fp16 with torch's loss scaler: the steps it skipped, on the device

    def __post_init__(self):
        if self.skipped is None and self.accelerator.scaler is not None:
            self.skipped = torch.zeros((), dtype=torch.int64, device=self.accelerator.device)

    def skipped_steps(self) -> int | None:
        """Optimizer steps that fp16's loss scaler skipped so far (their gradients held an inf or NaN;
        the scale is halved instead), or None without one (bf16, float32). A device sync: log time only."""
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            engine = self.accelerator.deepspeed_engine_wrapped.engine
            return engine.skipped_steps if engine.fp16_enabled() else None  # DeepSpeed's own scaler counts them
        return int(self.skipped.item()) if self.skipped is not None else None

    @property
    def n_params(self) -> int:
        # ZeRO-3 leaves each process an empty placeholder per parameter, its size in ds_numel
        return sum(getattr(p, "ds_numel", None) or p.numel() for p in causal_lm(self.model).parameters())


def make_accelerator(recipe: Recipe, **options) -> Accelerator:
    dev = device_type(recipe.system.device)
    if dev == "cuda":  # TF32 matmuls: float32 range, tensor-core speed (as nanoGPT)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if dev == "cpu":  # before the model exists: torch's thread pool starts with its first parallel op
        threads, why = cpu_threads(recipe.system.threads)
        torch.set_num_threads(threads)
    accelerator = Accelerator(cpu=dev == "cpu", mixed_precision=resolve_mixed_precision(recipe.system.mixed_precision, dev),
                              **options)
    if dev == "cpu":
        accelerator.print(f"threads: {threads} ({why})")
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
        model = build_model(m, vocab_size=meta["vocab_size"], eot_token_id=meta.get("eot_token_id"),
                            memory=available_memory(device_type(recipe.system.device)))
    else:
        if checkpoint is None:
            source = m.init_from
        elif m.lora_r:  # a LoRA checkpoint holds the adapter only: the base it was trained on is loaded again
            source = adapter_base(checkpoint / ADAPTER)
        else:
            source = str(checkpoint)
        model = load_model(source, m.block_size, m.dropout, say=say if checkpoint is None else None)
        check_vocabulary(recipe, meta, tokenizer, model, source)
        set_generation_defaults(model, m.block_size, meta.get("eot_token_id"))
        if not m.bias:  # as build_model does: zero and frozen from the first iteration, and again on resume
            total, non_zero = zero_biases(model)
            if checkpoint is None and not total:
                say(f"bias: false: {m.init_from} ({model.config.model_type}) has no biases; nothing to do")
            elif non_zero and checkpoint is None:
                say(f"bias: false: zeroed and froze the {total} bias tensors of {m.init_from} ({non_zero} were not "
                    "zero, so its outputs change from the first iteration)")
        pad_in_generation_config(model)
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
    """Data (prepared by the main process when needed), model, optimizer and batches. The data
    stage gets a DataSpec (run.data: the tokenizer resolved once; the caller records its name in
    the recipe that recipe.yaml, the card and resume read) and leaves `recipe` as it is."""
    r, t = recipe, recipe.train
    spec = data_spec(r)
    # the main process prepares first, then the first process of each other machine (which finds
    # the data there on a shared file system, or prepares its own copy), then everyone else; each
    # reads meta.json, the tokenizer and the token files with the folder locked (no prepare between)
    folder = spec.folder
    with accelerator.main_process_first(), accelerator.local_main_process_first(), prepared(spec) as meta:
        tokenizer = load_tokenizer(str(folder / "tokenizer"))
        train_tokens = load_tokens(folder, meta, "train", spec.block_size)
        val_tokens = load_tokens(folder, meta, "val", spec.block_size)
    check_sample_start(r, tokenizer, spec.tokenizer, accelerator.device.type)
    if r.train.time_budget and checkpoint is None:
        plan_run(r, meta, accelerator)  # the shape, batch, optimizer and iterations, from this machine's pace

    # the global batch is the recipe's whatever the number of processes: each does its share
    world = accelerator.num_processes
    if t.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps={t.gradient_accumulation_steps} is not divisible by the {world} "
                        f"processes: make it a multiple of {world}")
    shared = shared_storage(accelerator, t.out_dir)
    if not shared and accelerator.distributed_type in SHARDED:
        strategy = accelerator.distributed_type.value
        raise UserError(f"out_dir={t.out_dir} is not on storage every machine sees, and {strategy} "
                        "checkpoints are written by every process into one folder: put out_dir on a shared file system")

    set_seed(t.seed)  # identical initial weights on every process
    gpt = make_model(r, meta, tokenizer, checkpoint, say=accelerator.print)
    torch.manual_seed(t.seed + accelerator.process_index)  # different dropout masks per process
    per_token = flops_per_token(gpt, r.model.block_size)
    accum = t.gradient_accumulation_steps // world
    model, optimizer, compiled = prepare_training(r, accelerator, gpt, accum)
    batches = batches_for(train_tokens, r.model.block_size, t.batch_size, t.seed, accelerator.process_index)
    return Run(accelerator, meta, tokenizer, train_tokens, val_tokens, model, optimizer, batches, accum=accum,
               tokens_per_iter=t.gradient_accumulation_steps * t.batch_size * r.model.block_size, compiled=compiled,
               flops_per_token=per_token, peak_flops=peak_flops(accelerator.device.type, accelerator.mixed_precision),
               shared_storage=shared, data=spec)


def plan_run(recipe: Recipe, meta: dict, accelerator: Accelerator) -> None:
    """A time budget's plan (hfgpt.training.budget): made by the main process, set on every process."""
    from accelerate.utils import broadcast_object_list

    from hfgpt.training.budget import plan_budget, set_values

    values = [None]
    if accelerator.is_main_process:
        values = [plan_budget(recipe, meta, accelerator.device, accelerator.mixed_precision, say=accelerator.print).values]
    if accelerator.num_processes > 1:
        broadcast_object_list(values)
        set_values(recipe, values[0])


def check_sample_start(recipe: Recipe, tokenizer, tokenizer_name: str, device: str) -> None:
    """The evaluations' samples start from sample_start: refuse, before anything is written, one the
    tokenizer cannot encode (the default "\n" on a corpus without newlines)."""
    log = recipe.log
    wanted = log.eval_samples if log.eval_samples is not None else int(device != "cpu")  # as eval_samples decides
    if wanted and (unknown := unknown_characters(tokenizer, log.sample_start)):
        raise UserError(f"sample_start={log.sample_start!r} has characters the {tokenizer_name} tokenizer of "
                        f"{recipe.data.dataset} does not know ({unknown!r}): set sample_start to text of the corpus "
                        "(e.g. --sample_start='The'), or eval_samples: 0")


def prepare_training(recipe: Recipe, accelerator: Accelerator, gpt, accum: int):
    """The causal LM as training runs it: the training attention, NextTokenLoss around it (the loss
    inside the compiled graph), torch.compile, the optimizer, the strategy's settings, accelerator.prepare.
    Returns (model, optimizer, compiled); model(x, y) is the loss."""
    use_training_attention(gpt, recipe.model.block_size)
    sharded = accelerator.distributed_type.value if accelerator.distributed_type in SHARDED else None
    optimizer = make_optimizer(gpt, recipe.optim, accelerator.device.type, sharded=sharded)
    compiled = should_compile(recipe.system.compile, accelerator.device.type)
    # FSDP and DeepSpeed compile the blocks only: the head and the loss run eagerly, chunked (no float32 logits)
    model = NextTokenLoss(gpt, chunked=accelerator.distributed_type in SHARDED)
    if compiled and accelerator.distributed_type in SHARDED:
        compile_blocks(gpt)
    elif compiled:
        model = torch.compile(model)
    set_wrap_unit(accelerator, gpt, say=accelerator.print)
    fill_deepspeed_config(accelerator, recipe.train.batch_size, accum, recipe.optim.grad_clip)
    reduce_in_float32(accelerator)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()  # from_pretrained returns models in eval mode: dropout would be off
    return model, optimizer, compiled


def stepper(run: Run, grad_clip: float):
    """train_step as a function of nothing, for benchmarks and tests: each call is one iteration and
    returns its loss; the next window is carried from call to call as the training loop carries it."""
    window = run.batches.next_window()

    def step() -> torch.Tensor:
        nonlocal window
        loss, window = train_step(run, window, grad_clip)
        return loss

    return step


def step_optimizer(run: Run) -> None:
    """optimizer.step(), counting the steps fp16's loss scaler skips in run.skipped without a sync.

    accelerate's optimizer.step_was_skipped cannot tell: with a fused optimizer (hfgpt's AdamW on
    CUDA) GradScaler hands the inf check to the optimizer's kernel and calls its step every time.
    A skipped step is one where update() lowered the scale (it only ever lowers it for an inf or
    NaN gradient), read from the scaler's device tensor (_scale: get_scale() would sync)."""
    scaler = run.accelerator.scaler
    if getattr(run, "skipped", None) is None or scaler is None:
        run.optimizer.step()
        return
    before = scaler._scale.clone()  # made by the first scale(), in accelerator.backward
    run.optimizer.step()
    run.skipped += scaler._scale < before


def train_step(run: Run, window: torch.Tensor, grad_clip: float):
    """One iteration: forward and backward over `accum` micro-batches, clip, update. Returns the
    iteration's mean loss (on the device, not synced) and the next window, fetched while the device works.

    Under accelerator.accumulate, sync_gradients is True on the last micro-batch only: DDP and FSDP
    reduce gradients then, the optimizer steps then (accelerate's wrapper skips the step before),
    and DeepSpeed's engine steps then, once per iteration. The loss is divided by `accum` once:
    by accelerator.backward, or under DeepSpeed by its engine (its accumulation is the same number,
    see fill_deepspeed_config), which also clips, from its config."""
    accelerator, model, optimizer = run.accelerator, run.model, run.optimizer
    loss_sum = torch.zeros((), device=accelerator.device)
    for _ in range(run.accum):
        with accelerator.accumulate(model):
            loss = model(*to_device(window, accelerator.device))
            window = run.batches.next_window()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if grad_clip > 0 and accelerator.distributed_type != DistributedType.DEEPSPEED:
                    accelerator.clip_grad_norm_(model.parameters(), grad_clip)
                step_optimizer(run)
                optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach() / run.accum
    return loss_sum, window
