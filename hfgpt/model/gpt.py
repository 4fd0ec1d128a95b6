"""The model: a transformers causal LM built from the recipe (architecture: gpt2, nanoGPT's, or
llama), or any causal LM loaded from the Hub or a folder and cropped to block_size.

    model = build_model(recipe.model, vocab_size=67, eot_token_id=65)
    model = load_model("gpt2-medium", block_size=256, dropout=0.1)
    model = load_model("user/my-model@v1", block_size=256)    # a branch, tag or commit of a Hub repo
    check_fits(config, available=16e9, where="RAM")           # UserError when training it cannot fit
    total, non_zero = zero_biases(model)  # bias: false
    enable_checkpointing(model)           # gradient_checkpointing: true
    loss = lm_loss(model, x, y)          # x, y: (B, T) windows, y shifted by one as nanoGPT's
    loss = NextTokenLoss(model)(x, y)    # the same, as a module: what training compiles and prepares
    gpt = causal_lm(prepared)            # the causal LM inside DDP / torch.compile / NextTokenLoss

What differs between families (config fields, dropout settings, position tables, blocks, linear
layers) is read in hfgpt.model.families, and nowhere else.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from hfgpt.config import ModelConfig
from hfgpt.core.errors import UserError, first_line
from hfgpt.core.names import hub_repo, split_revision
from hfgpt.model.families import ARCHITECTURES, count_parameters, dropout_keys, model_shape, new_config, position_table
from hfgpt.model.loss import chunked_lm_loss, output_layer

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


def check_fits(config, available: float, where: str) -> None:
    """Refuse, before building it, a model whose training cannot fit in `available` bytes: float32
    weights, gradients and AdamW's two moments take TRAIN_BYTES per parameter, activations come on
    top, so this is a lower bound and only a model that surely cannot fit is refused."""
    n = count_parameters(config)
    need = n * TRAIN_BYTES
    if need > available:
        shape = model_shape(config)
        count = f"{n / 1e9:,.1f}B" if n >= 1e9 else f"{n / 1e6:,.1f}M"
        raise UserError(f"n_layer={shape.n_layer}, n_embd={shape.n_embd}: the model has {count} parameters, "
                        f"and training it needs at least {need / 1e9:,.1f} GB ({TRAIN_BYTES} bytes per parameter: "
                        f"float32 weights, gradients and AdamW's two moments), but {where} has {available / 1e9:,.1f} GB "
                        "available: lower n_embd or n_layer")


def build_model(m: ModelConfig, vocab_size: int, eot_token_id: int | None,
                memory: tuple[float, str] | None = None):
    """A new model of m.architecture with its family's initialisation (GPT-2's is nanoGPT's).
    Padded ids (see VOCAB_MULTIPLE) never occur in the data and are suppressed in generation, so
    none is sampled. With `memory` (bytes available, where), a model that cannot train there is
    refused first."""
    padded = padded_vocab_size(vocab_size)
    config = new_config(m, vocab_size=padded, eot_token_id=eot_token_id)
    if memory is not None:
        check_fits(config, *memory)
    model = ARCHITECTURES[m.architecture].MODEL(config)
    if not m.bias:
        zero_biases(model)  # GPT-2 keeps its layout (its biases fixed at zero); a llama without bias has none
    set_generation_defaults(model, m.block_size, eot_token_id)
    if padded > vocab_size:
        model.generation_config.suppress_tokens = list(range(vocab_size, padded))
    return model


def zero_biases(model: torch.nn.Module) -> tuple[int, int]:
    """nanoGPT's bias=False in the model's own layout: every bias (Linear and LayerNorm) set to zero
    and frozen, so the optimizer never holds it. Returns (bias tensors, how many were not zero):
    (0, 0) for a family without biases (Llama, Mistral, Gemma)."""
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
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"gradient_checkpointing: transformers has no activation checkpointing for "
                        f"{model.config.model_type} models: set gradient_checkpointing: false (or lora_r > 0 to save memory)")
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def set_generation_defaults(model, block_size: int, eot_token_id: int | None) -> None:
    """Sample like nanoGPT by default and never run past the context the model trained on."""
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


def load_model(init_from: str, block_size: int, dropout: float | None = None, say=None):
    """Any causal LM from a Hub id (user/name@revision for a branch, tag or commit) or a local
    folder, cropped to block_size positions, with float32 weights whatever dtype its files store
    (transformers 5 would keep a bf16 model in bf16: master weights must be float32, and
    mixed_precision decides the compute dtype). `dropout` goes to each of the family's dropout
    settings (hfgpt.model.families.dropout_keys); `say` (print) tells where it went."""
    from hfgpt.model.folder import check_model_folder  # folder.py imports this module

    check_model_folder(init_from)
    name, revision = split_revision(init_from)
    repo = hub_repo(name)
    kwargs = {"revision": revision} if revision else {}
    try:
        config = AutoConfig.from_pretrained(repo, **kwargs)
        if dropout is not None:
            set_dropout(config, dropout, init_from, say)
        model = AutoModelForCausalLM.from_pretrained(repo, config=config, dtype=torch.float32, **kwargs)
    except OSError as e:
        raise UserError(
            f"init_from='{init_from}' could not be loaded: it is not a local model folder and the Hugging Face Hub "
            f"or its cache does not have it ({first_line(e)}); with network access run "
            f"`hf download {repo}{f' --revision {revision}' if revision else ''}`, "
            "or set init_from to a local folder or 'scratch'") from None
    except ValueError as e:  # a config of no causal LM (an encoder, a vision model) or of an unknown model_type
        raise UserError(f"init_from='{init_from}' is not a causal language model transformers can load "
                        f"({first_line(e)}): give a text-generation model (Llama, Qwen, Mistral, GPT-2, ...)") from None
    crop_block_size(model, block_size)
    # GPT-2's config.json carries {"text-generation": {"max_length": 50, ...}}, which transformers
    # 4.x pipelines apply over generation_config.json: not in the folders hfgpt saves.
    model.config.task_specific_params = None
    return model


def set_dropout(config, dropout: float, init_from: str, say=None) -> tuple[str, ...]:
    """nanoGPT's one dropout on each dropout setting the family has; a family without any trains
    without dropout, and `say` tells so (once, when dropout > 0)."""
    keys = dropout_keys(config)
    for key in keys:
        setattr(config.get_text_config(), key, dropout)
    if say is not None and dropout > 0:
        say(f"dropout={dropout}: " + (f"set {', '.join(keys)} of {config.model_type}" if keys else
                                       f"{config.model_type} models have no dropout setting; {init_from} trains without dropout"))
    return keys


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
    """The context the model was made for: its learned position table's rows, or a rotary model's
    max_position_embeddings."""
    return model_shape(model.config).context


def crop_block_size(model, block_size: int) -> None:
    """Shrink a learned position table to block_size, as nanoGPT's crop_block_size (GPT-2's wpe,
    OPT's embed_positions with its offset rows); rotary and ALiBi models have no table to crop, and
    block_size must be within their context."""
    limit = n_positions(model)
    if limit is not None and block_size > limit:
        raise UserError(f"block_size={block_size} is larger than the {limit} positions of {model.name_or_path}: "
                        f"set block_size to {limit} or less")
    table = position_table(model)
    if table is not None and limit is not None and block_size < limit:
        rows = block_size + table.num_embeddings - limit  # OPT keeps 2 rows before position 0
        table.weight = torch.nn.Parameter(table.weight.data[:rows].clone())
        table.num_embeddings = rows
        model.config.max_position_embeddings = block_size  # GPT-2: n_positions, through its attribute_map
    if model.config.model_type == "gpt2":  # GPT-2's n_ctx (1024 in its config.json) says the same as n_positions
        model.config.n_ctx = model.config.n_positions
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
    (own_names removes it).

    chunked=True (FSDP and DeepSpeed, where the head runs outside any compiled graph): the loss of
    hfgpt.model.loss.chunked_lm_loss, which never holds the float32 (B, T, vocab) logits, for every
    model whose logits are its output layer applied to its final hidden states (checked here once;
    others keep lm_loss)."""

    def __init__(self, lm, chunked: bool = False):
        super().__init__()
        self.lm = lm
        self.chunked = chunked and output_layer(lm) is not None

    @property
    def config(self):  # accelerate's DeepSpeed preparation reads model.config
        return self.lm.config

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return chunked_lm_loss(self.lm, x, y) if self.chunked else lm_loss(self.lm, x, y)


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
