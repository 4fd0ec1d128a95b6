"""The model: a transformers GPT2LMHeadModel built from the recipe, or any causal LM loaded from
the Hub or a folder and cropped to block_size.

    model = build_model(recipe.model, vocab_size=67, eot_token_id=65)
    model = load_model("gpt2-medium", block_size=256, dropout=0.1)
    model = load_model("user/my-model@v1", block_size=256)    # a branch, tag or commit of a Hub repo
    total, non_zero = zero_biases(model)  # bias: false
    enable_checkpointing(model)           # gradient_checkpointing: true
    loss = lm_loss(model, x, y)          # x, y: (B, T) windows, y shifted by one as nanoGPT's
"""

from pathlib import Path

import torch
import torch.nn.functional as F
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
        pad_token_id=eot_token_id,
    )


def build_model(m: ModelConfig, vocab_size: int, eot_token_id: int | None) -> GPT2LMHeadModel:
    """A new GPT2LMHeadModel with GPT-2's initialisation (the same as nanoGPT's). Padded ids (see
    VOCAB_MULTIPLE) never occur in the data and are suppressed in generation, so none is sampled."""
    padded = padded_vocab_size(vocab_size)
    model = GPT2LMHeadModel(gpt2_config(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                                        dropout=m.dropout, vocab_size=padded, eot_token_id=eot_token_id))
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


def load_model(init_from: str, block_size: int, dropout: float | None = None):
    """Any causal LM from a Hub id (user/name@revision for a branch, tag or commit) or a local
    folder, cropped to block_size positions, with float32 weights whatever dtype its files store
    (transformers 5 would keep a bf16 model in bf16: master weights must be float32, and
    mixed_precision decides the compute dtype)."""
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
