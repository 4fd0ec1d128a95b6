"""Attention for training: transformers' SDPA attention called with `is_causal=True` and no mask, on
every device; in float32 on the CPU under mixed precision.

    use_training_attention(model, block_size=256)      # before torch.compile and accelerator.prepare

Why not plain "sdpa": transformers 5 builds the attention mask itself (masking_utils.create_causal_mask).
In a training forward (no padding mask, no cache) it checks for packed sequences in position_ids;
outside torch.compile that check reads a value back from the device every forward (a host sync on
a GPU), and under torch.compile its answer is a traced tensor, so a full (B, 1, T, T) mask is built
and SDPA gets `attn_mask=<mask>, is_causal=False`: no flash-attention kernel can take that, and a
compiled GPU run falls back to the slower memory-efficient one. An attention name registered with
AttentionInterface but not with AttentionMaskInterface gets no mask at all (create_causal_mask
returns None first thing), and transformers' sdpa_attention_forward then passes
`is_causal = (query length > 1)`: causal for training windows and for a KV-cache prefill; a
one-token decode step attends to the whole cache. Padding masks are not applied: the model object
that trains is never given padded batches (training windows, evaluation samples of one prompt).
Nothing of this is saved: config.json keeps no attention implementation, a saved model loads as
plain "sdpa".
"""

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hfgpt.model.families import model_shape

NAME = "hfgpt_sdpa"


def training_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention (never given a mask, see above). On the CPU, bf16/fp16 inputs
    are computed in float32, the rest of the model staying in mixed precision: torch's CPU flash
    attention is about 4x slower in bf16 than in float32 at GPT sizes (its backward: 4.5 vs 1.2 ms
    with the casts, for 12x4x64x32), while bf16 matmuls with AMX are 3-4x faster than float32 ones. Float32 is
    also the more exact of the two, so pretrained models lose nothing by it. Rotary models (Llama,
    Qwen, ...) hand it float32 queries and keys under bf16 autocast (their cos/sin are float32):
    autocast is off here for them too, or it would run the attention in bf16."""
    dtype = query.dtype
    if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu") and dtype == torch.float32:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(dtype), weights


AttentionInterface.register(NAME, training_attention)  # not AttentionMaskInterface: no mask is ever built


def use_training_attention(model, block_size: int | None = None) -> None:
    """training_attention for an SDPA causal LM whose every layer attends to all earlier tokens of
    a training window: GPT-2, Llama, Qwen, GPT-NeoX and most others, and models with sliding-window
    or chunked attention (Mistral, Gemma's local layers) whose windows are no shorter than
    block_size, where the window hides nothing. Shorter windows need the masks transformers builds,
    and models on eager or flash-attn attention keep theirs."""
    shape = model_shape(model.config)
    if model.config._attn_implementation == "sdpa" and not shape.window_limits(block_size or shape.context or 0):
        model.set_attn_implementation(NAME)
