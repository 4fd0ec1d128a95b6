"""The model: a transformers GPT2LMHeadModel built from the recipe, or any causal LM loaded from
the Hub or a folder and cropped to block_size.

    model = build_model(recipe.model, vocab_size=67, eot_token_id=65)
    model = load_model("gpt2-medium", block_size=256, dropout=0.1)
    model = load_model("user/my-model@v1", block_size=256)    # a branch, tag or commit of a Hub repo
    check_fits(config, available=16e9, where="RAM")           # UserError when training it cannot fit
    total, non_zero = zero_biases(model)  # bias: false
    enable_checkpointing(model)           # gradient_checkpointing: true
    loss = lm_loss(model, x, y)          # x, y: (B, T) windows, y shifted by one as nanoGPT's
    loss = NextTokenLoss(model)(x, y)    # the same, as a module: what training compiles and prepares
    gpt = causal_lm(prepared)            # the causal LM inside DDP / torch.compile / NextTokenLoss
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from transformers import AutoModelForCausalLM, GenerationConfig, GPT2Config, GPT2LMHeadModel

from hfgpt.config import ModelConfig
from hfgpt.core.errors import UserError, first_line
from hfgpt.core.names import hub_repo, split_revision

# Sampling defaults written into every saved model, so a plain pipeline samples as nanoGPT's sample.py.
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_k": 200}
# A new model's vocabulary (not the tokenizer's) is rounded up to a multiple of 64 once it is large
# (GPT-2's 50257 -> 50304, as nanoGPT): GPU matmuls run faster on such shapes. Small vocabularies
# (char, byte) stay exact, where padding would only add work.
VOCAB_MULTIPLE, PAD_VOCAB_ABOVE = 64, 1024
TRAIN_BYTES = 4 * 4  # per parameter in training: float32 weight, gradient, AdamW's exp_avg and exp_avg_sq


def padded_vocab_size(vocab_size: int) -> int:
    if vocab_size <= PAD_VOCAB_ABOVE:
        return vocab_size
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def dropout_settings(dropout: float) -> dict:
    """nanoGPT's one dropout as GPT-2's three config keys."""
    return {"embd_pdrop": dropout, "attn_pdrop": dropout, "resid_pdrop": dropout}


def gpt2_config(*, n_layer: int, n_head: int, n_embd: int, block_size: int, dropout: float, vocab_size: int,
                eot_token_id: int | None = None) -> GPT2Config:
    """The one place where nanoGPT's names become GPT-2's: block_size -> n_positions, dropout -> *_pdrop."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        **dropout_settings(dropout),
        # nanoGPT's exact GELU: as good as GPT-2's tanh approximation and faster on CPU.
        activation_function="gelu",
        bos_token_id=eot_token_id,
        eos_token_id=eot_token_id,
        # no pad_token_id: with one in the config, every forward without a compile checks the batch
        # for it, a device-to-host read per step (the pad id lives in generation_config instead)
    )


def gpt2_parameters(config: GPT2Config) -> int:
    """Parameters of a GPT2LMHeadModel with this config, counted without building it (the output
    layer shares the token embedding)."""
    e, inner = config.n_embd, config.n_inner or 4 * config.n_embd
    # per block: two LayerNorms, attention's qkv and output projections, the MLP's two layers (with biases)
    block = 2 * 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * inner + inner) + (inner * e + e)
    return (config.vocab_size + config.n_positions) * e + config.n_layer * block + 2 * e


def check_fits(config: GPT2Config, available: float, where: str) -> None:
    """Refuse, before building it, a model whose training cannot fit in `available` bytes: float32
    weights, gradients and AdamW's two moments take TRAIN_BYTES per parameter, activations come on
    top, so this is a lower bound and only a model that surely cannot fit is refused."""
    n = gpt2_parameters(config)
    need = n * TRAIN_BYTES
    if need > available:
        count = f"{n / 1e9:,.1f}B" if n >= 1e9 else f"{n / 1e6:,.1f}M"
        raise UserError(f"n_layer={config.n_layer}, n_embd={config.n_embd}: the model has {count} parameters, "
                        f"and training it needs at least {need / 1e9:,.1f} GB ({TRAIN_BYTES} bytes per parameter: "
                        f"float32 weights, gradients and AdamW's two moments), but {where} has {available / 1e9:,.1f} GB "
                        "available: lower n_embd or n_layer")


def build_model(m: ModelConfig, vocab_size: int, eot_token_id: int | None,
                memory: tuple[float, str] | None = None) -> GPT2LMHeadModel:
    """A new GPT2LMHeadModel with GPT-2's initialisation (the same as nanoGPT's). Padded ids (see
    VOCAB_MULTIPLE) never occur in the data and are suppressed in generation, so none is sampled.
    With `memory` (bytes available, where), a model that cannot train there is refused first."""
    padded = padded_vocab_size(vocab_size)
    config = gpt2_config(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                         dropout=m.dropout, vocab_size=padded, eot_token_id=eot_token_id)
    if memory is not None:
        check_fits(config, *memory)
    model = GPT2LMHeadModel(config)
    if not m.bias:
        zero_biases(model)
    set_generation_defaults(model, m.block_size, eot_token_id)
    if padded > vocab_size:
        model.generation_config.suppress_tokens = list(range(vocab_size, padded))
    return model


def zero_biases(model: torch.nn.Module) -> tuple[int, int]:
    """nanoGPT's bias=False in GPT-2's layout: every bias (Linear and LayerNorm) set to zero and
    frozen, so the optimizer never holds it. Returns (bias tensors, how many were not zero)."""
    total = non_zero = 0
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            total += 1
            non_zero += bool(p.detach().ne(0).any())
            p.data.zero_()
            p.requires_grad_(False)
    return total, non_zero


def enable_checkpointing(model) -> None:
    """transformers' own activation checkpointing of every block, non-reentrant (it replays dropout's
    random numbers, so a step computes the same loss and gradients as without it). transformers
    5.24 renamed gradient_checkpointing_enable (a deprecated alias since) to
    activation_checkpointing_enable; earlier 5.x releases have only the first."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def transformer_blocks(model) -> list[torch.nn.Module]:
    """The model's transformer blocks: the modules transformers keeps whole when it splits a model
    (its _no_split_modules: GPT2Block for GPT-2)."""
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in kinds]


def set_generation_defaults(model, block_size: int, eot_token_id: int | None) -> None:
    """Sample like nanoGPT by default and never run past the position table."""
    gen = model.generation_config or GenerationConfig()
    for key, value in SAMPLING.items():
        setattr(gen, key, value)
    gen.max_length = block_size
    if eot_token_id is not None:
        gen.eos_token_id = eot_token_id
        gen.pad_token_id = eot_token_id
    model.generation_config = gen


def pad_in_generation_config(model) -> None:
    """Move a loaded model's config.pad_token_id to its generation_config, where generation reads
    it. Left in the config, it costs a device-to-host read in every uncompiled training forward:
    transformers checks whether the batch holds it (warn_if_padding_and_no_attention_mask)."""
    pad = model.config.pad_token_id
    if pad is None:
        return
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = pad
    model.config.pad_token_id = None


def load_model(init_from: str, block_size: int, dropout: float | None = None):
    """Any causal LM from a Hub id (user/name@revision for a branch, tag or commit) or a local
    folder, cropped to block_size positions, with float32 weights whatever dtype its files store
    (transformers 5 would keep a bf16 model in bf16: master weights must be float32, and
    mixed_precision decides the compute dtype)."""
    from hfgpt.model.folder import check_model_folder  # folder.py imports this module

    check_model_folder(init_from)
    name, revision = split_revision(init_from)
    repo = hub_repo(name)
    kwargs = {"revision": revision} if revision else {}
    if dropout is not None:
        kwargs |= dropout_settings(dropout)
    try:
        model = AutoModelForCausalLM.from_pretrained(repo, dtype=torch.float32, **kwargs)
    except OSError as e:
        raise UserError(
            f"init_from='{init_from}' could not be loaded: it is not a local model folder and the Hugging Face Hub "
            f"or its cache does not have it ({first_line(e)}); with network access run `hf download {repo}{f' --revision {revision}' if revision else ''}`, "
            "or set init_from to a local folder or 'scratch'") from None
    crop_block_size(model, block_size)
    # GPT-2's config.json carries {"text-generation": {"max_length": 50, ...}}, which transformers
    # 4.x pipelines apply over generation_config.json: not in the folders hfgpt saves.
    model.config.task_specific_params = None
    return model


def pinned(init_from: str) -> str:
    """init_from as name@commit of the Hub snapshot it was just loaded from (a LoRA adapter records
    the exact base it was trained on, which its resume loads again); a local folder as it is."""
    name, revision = split_revision(init_from)
    if Path(name).exists():
        return init_from
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(hub_repo(name), "config.json", revision=revision)
    return f"{name}@{Path(path).parent.name}" if isinstance(path, str) else init_from


def n_positions(model) -> int | None:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def crop_block_size(model, block_size: int) -> None:
    """Shrink a learned position table to block_size, as nanoGPT's crop_block_size."""
    limit = n_positions(model)
    if limit is not None and block_size > limit:
        raise UserError(f"block_size={block_size} is larger than the {limit} positions of {model.name_or_path}: "
                        f"set block_size to {limit} or less")
    wpe = getattr(getattr(model, "transformer", None), "wpe", None)
    if isinstance(wpe, torch.nn.Embedding) and block_size < wpe.num_embeddings:
        model.transformer.wpe = torch.nn.Embedding.from_pretrained(wpe.weight.data[:block_size].clone(), freeze=False)
        model.config.n_positions = block_size
    if model.generation_config is not None and (model.generation_config.max_length or 0) > block_size:
        model.generation_config.max_length = block_size


def lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over all B*T targets.

    x, y: (B, T) with y[:, t] = x[:, t + 1] already. Passing labels= would make the model shift
    them again and train on T - 1 of the T targets, so the loss is taken from the logits here.
    """
    # use_cache=False: GPT-2 would otherwise build a KV cache in every training forward, for nothing
    logits = model(input_ids=x, use_cache=False).logits  # (B, T, vocab)
    return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.reshape(-1))


class NextTokenLoss(torch.nn.Module):
    """lm_loss as a module: model(x, y) -> the mean loss, a float32 scalar.

    Training compiles and prepares this rather than the causal LM, so that the loss is computed
    inside the compiled graph (as nanoGPT's forward does) and the forward returns no logits:
    accelerate's mixed precision wraps the prepared module's forward and copies every bf16/fp16
    output to float32 (convert_outputs_to_fp32), which for GPT-2 124M's (12, 1024, 50304) logits
    is 2.5 GB a micro-batch. The causal LM is the only child, `lm`: state dict names carry "lm."
    (own_names removes it)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    @property
    def config(self):  # accelerate's DeepSpeed preparation reads model.config
        return self.lm.config

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lm_loss(self.lm, x, y)


COMPILED_PREFIX, WRAPPER_PREFIX = "_orig_mod.", "lm."  # torch.compile's and NextTokenLoss's child names


def _inner(model):
    model = extract_model_from_parallel(model, keep_torch_compile=False)
    return getattr(model, "_orig_mod", model)


def causal_lm(model):
    """The causal LM inside whatever wraps it for training: DDP, DeepSpeed, torch.compile (outside
    or inside DDP: accelerate's unwrap_model keeps an inner one), NextTokenLoss."""
    model = _inner(model)
    return model.lm if isinstance(model, NextTokenLoss) else model


def own_names(model, state_dict: dict) -> dict:
    """`model`'s state dict (as accelerator.get_state_dict returns it) under the causal LM's own
    names (GPT-2's transformer.h.0..., lm_head.weight), as save_pretrained and from_pretrained expect."""
    wrapped = isinstance(_inner(model), NextTokenLoss)
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix(COMPILED_PREFIX)
        out[key.removeprefix(WRAPPER_PREFIX) if wrapped else key] = value
    return out
