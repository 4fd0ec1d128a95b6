"""architecture: llama (the block of Llama, SmolLM, Qwen, Mistral): a transformers LlamaForCausalLM
from nanoGPT's names: rotary positions, RMSNorm, a SwiGLU MLP, grouped-query attention.

    config = new_config(recipe.model, vocab_size=67, eot_token_id=65)

n_layer, n_head, n_embd as GPT-2's; n_kv_head key/value heads (None: n_head, plain multi-head
attention; a divisor of n_head shares each key/value head among n_head / n_kv_head query heads);
block_size -> max_position_embeddings (rotary: no table, the model was made for this context);
dropout -> attention_dropout (LlamaConfig's only dropout); bias -> attention_bias and mlp_bias
(a bias on every Linear; Llama has none: recipes set bias: false). The SwiGLU MLP has 8/3 x n_embd
hidden units (rounded to a multiple of 64), so its three matrices hold as many weights as GPT-2's
two of 4 x n_embd. The output layer is tied to the token embedding, as nanoGPT's and SmolLM's.
The folder is a plain Llama: it loads wherever a Llama loads (transformers, vLLM, llama.cpp).
"""

from transformers import LlamaConfig, LlamaForCausalLM

MODEL = LlamaForCausalLM

MLP_MULTIPLE = 64
ROPE_THETA = 10000.0


def swiglu_hidden(n_embd: int) -> int:
    """8/3 x n_embd rounded to the nearest multiple of 64 (at least 64): 128 -> 320, 384 -> 1024, 768 -> 2048."""
    return max(MLP_MULTIPLE, round(8 * n_embd / 3 / MLP_MULTIPLE) * MLP_MULTIPLE)


def new_config(m, vocab_size: int, eot_token_id: int | None) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=m.n_embd,
        intermediate_size=swiglu_hidden(m.n_embd),
        num_hidden_layers=m.n_layer,
        num_attention_heads=m.n_head,
        num_key_value_heads=m.n_kv_head or m.n_head,
        head_dim=m.n_embd // m.n_head,
        max_position_embeddings=m.block_size,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        rms_norm_eps=1e-5,
        attention_dropout=m.dropout,
        attention_bias=m.bias,
        mlp_bias=m.bias,
        tie_word_embeddings=True,
        bos_token_id=eot_token_id,
        eos_token_id=eot_token_id,
    )
