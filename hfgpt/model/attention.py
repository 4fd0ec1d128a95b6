"""Attention for training: transformers' SDPA attention, computed in float32 on the CPU under
mixed precision.

    use_float32_attention(model, device="cpu", precision="bf16")   # sets model's attention function
"""

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward


def float32_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention with bf16/fp16 inputs computed in float32 on the CPU, the
    rest of the model staying in mixed precision. torch's CPU flash attention is about 4x slower
    in bf16 than in float32 at GPT sizes (its backward: 4.5 vs 1.2 ms with the casts, for
    12x4x64x32), while bf16 matmuls with AMX are 3-4x faster than float32 ones. Float32 is also
    the more exact of the two, so pretrained models lose nothing by it."""
    dtype = query.dtype
    if query.device.type != "cpu" or dtype == torch.float32:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(dtype), weights


AttentionInterface.register("hfgpt_float32_sdpa", float32_sdpa)


def use_float32_attention(model, device: str, precision: str) -> None:
    """Float32 attention (float32_sdpa) for an SDPA model trained in mixed precision on the CPU.
    Not saved: config.json keeps no attention implementation, so the saved model loads as usual."""
    if device == "cpu" and precision in ("bf16", "fp16") and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation("hfgpt_float32_sdpa")
