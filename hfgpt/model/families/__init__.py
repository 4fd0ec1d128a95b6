"""Model families: what hfgpt needs to know about a causal LM's architecture, read in one place.

    shape = model_shape(model.config)      # Shape: layers, heads (query, key/value), width, head size, context, windows
    keys = dropout_keys(config)             # where nanoGPT's one dropout goes: ("attention_dropout",) for Llama
    table = position_table(model)           # a learned position table (GPT-2's wpe, OPT's embed_positions) or None
    names = linear_layer_names(model)       # every matrix of a block: ["c_attn", "c_proj", "c_fc"] for GPT-2
    blocks = transformer_blocks(model)      # the modules transformers keeps whole (its _no_split_modules)
    config = new_config(recipe.model, vocab_size=67, eot_token_id=65)   # architecture: gpt2 | llama
    n = count_parameters(config)            # without building the model (on the meta device)
    share = expert_share(config)            # 2 / 8 for Mixtral: the experts a token goes through

Models trained from scratch are built by one module per architecture (gpt2.py, llama.py), from
nanoGPT's names. Loaded models are any AutoModelForCausalLM: their configs are read through the
names transformers gives every family (hidden_size, num_hidden_layers, num_attention_heads,
max_position_embeddings: GPT-2's n_embd, n_layer, n_head, n_positions are mapped to these by its
config's attribute_map), with the optional fields read here and nowhere else.
"""

from dataclasses import dataclass

import torch

from hfgpt.model.families import gpt2, llama

ARCHITECTURES = {"gpt2": gpt2, "llama": llama}
# Config keys that are dropout probabilities on a model's main path, across the families transformers
# ships (GPT-2/GPT-J/Phi: *_pdrop; Llama, Qwen, Mistral, Gemma: attention_dropout; GPT-NeoX, Falcon,
# Bloom, StableLM: hidden_dropout; OPT: dropout, activation_dropout; GPT-Neo: embed_/resid_dropout;
# BERT-style decoders: hidden_dropout_prob, attention_probs_dropout_prob.) Not classifier heads' or layer drop.
DROPOUT_KEYS = ("embd_pdrop", "attn_pdrop", "resid_pdrop", "embed_dropout", "attention_dropout", "resid_dropout",
                "hidden_dropout", "dropout", "activation_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob")
# Names of learned absolute position tables (GPT-2, GPT-Neo: wpe; OPT, BioGPT: embed_positions).
POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")


@dataclass(frozen=True)
class Shape:
    """A causal LM's shape as its config gives it."""

    model_type: str
    n_layer: int
    n_head: int  # query heads
    n_kv_head: int  # key/value heads (fewer with grouped-query attention)
    n_embd: int
    head_dim: int
    context: int | None  # max_position_embeddings: the learned table's rows, or the context a rotary model was made for
    # per layer: how many earlier tokens a query sees (sliding/chunked), None: all, 0: no attention
    windows: tuple[int | None, ...]

    def window_limits(self, block_size: int) -> bool:
        """Whether some layer's window hides tokens of a block_size window (a sliding window of w
        tokens sees all of a window of at most w tokens)."""
        return any(w is not None and 0 < w < block_size for w in self.windows)

    def keys_seen(self, block_size: int) -> int:
        """Keys all layers' queries see in a block_size window, at most: attention's share of the FLOPs."""
        return sum(block_size if w is None else min(block_size, w) for w in self.windows)


def model_shape(config) -> Shape:
    """The shape of the language model a config describes (a multimodal model's text model; a
    state-space model such as Mamba has no attention heads: 0)."""
    config = config.get_text_config()
    n_layer, n_embd = config.num_hidden_layers, config.hidden_size
    n_head = getattr(config, "num_attention_heads", None) or 0
    return Shape(model_type=config.model_type, n_layer=n_layer, n_head=n_head,
                 n_kv_head=getattr(config, "num_key_value_heads", None) or n_head, n_embd=n_embd,
                 head_dim=getattr(config, "head_dim", None) or (n_embd // n_head if n_head else 0),
                 context=getattr(config, "max_position_embeddings", None), windows=attention_windows(config, n_layer))


def attention_windows(config, n_layer: int) -> tuple[int | None, ...]:
    """Each layer's attention window: Mistral's sliding_window on every layer, Gemma's and Qwen's
    sliding layers and Llama 4's chunked ones by their layer_types, None for full causal attention,
    0 for layers without attention (and for every layer of a state-space model)."""
    sliding = getattr(config, "sliding_window", None)
    chunk = getattr(config, "attention_chunk_size", None)
    types = getattr(config, "layer_types", None)
    if types:  # other kinds of layer (LFM2's convolutions, Qwen3-Next's linear attention) see no keys: 0
        by_type = {"full_attention": None, "sliding_attention": sliding, "chunked_attention": chunk}
        return tuple(by_type.get(t, 0) for t in types)
    if not getattr(config, "num_attention_heads", None):
        return (0,) * n_layer  # Mamba, RWKV
    return (sliding or chunk,) * n_layer


def expert_share(config) -> float:
    """The share of a mixture-of-experts layer's experts each token goes through (Mixtral: 2 of 8);
    1 for dense models."""
    config = config.get_text_config()
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    per_token = getattr(config, "num_experts_per_tok", None)
    return per_token / experts if experts and per_token else 1.0


def dropout_keys(config) -> tuple[str, ...]:
    """The config's dropout settings (DROPOUT_KEYS it has; a multimodal config's are its text
    config's, config.get_text_config()): where nanoGPT's one dropout goes."""
    present = config.get_text_config().to_dict()
    return tuple(k for k in DROPOUT_KEYS if isinstance(present.get(k), (int, float)) and not isinstance(present[k], bool))


def position_table(model) -> torch.nn.Embedding | None:
    """The model's learned absolute position table (an nn.Embedding, OPT's subclass with its offset
    too), or None for rotary and ALiBi models, which have none."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in POSITION_TABLES and isinstance(module, torch.nn.Embedding):
            return module
    return None


def transformer_blocks(model) -> list[torch.nn.Module]:
    """The model's transformer blocks: the modules transformers keeps whole when it splits a model
    (its _no_split_modules: GPT2Block, LlamaDecoderLayer, GPTNeoXLayer, ...)."""
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in kinds]


def linear_layer_names(model) -> list[str]:
    """The names (last part) of every matrix inside the transformer blocks, in model order:
    GPT-2's c_attn, c_proj, c_fc; Llama's q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj."""
    from transformers.pytorch_utils import Conv1D

    names = {}
    for block in transformer_blocks(model):
        for name, module in block.named_modules():
            if isinstance(module, (torch.nn.Linear, Conv1D)):
                names[name.rsplit(".", 1)[-1]] = True
    return list(names)


def new_config(m, vocab_size: int, eot_token_id: int | None):
    """The transformers config of a model trained from scratch, from the recipe's model section."""
    return ARCHITECTURES[m.architecture].new_config(m, vocab_size=vocab_size, eot_token_id=eot_token_id)


def count_parameters(config) -> int:
    """Parameters of the model this config builds (tied weights once), counted on the meta device:
    nothing is allocated."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())
