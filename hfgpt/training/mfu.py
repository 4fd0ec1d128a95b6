"""Model FLOPs utilization: the share of the device's peak FLOPS that training turns into model math.

    per_token = flops_per_token(model, block_size)        # 6N + 12 L H Q T, as nanoGPT and PaLM count
    peak = peak_flops("cuda", "bf16")                      # from the table below, None where unknown
    mfu(per_token, tokens_per_sec, peak)                   # 0.41, or None

The peaks are the dense (no sparsity) tensor-core figures from NVIDIA's data sheets, per GPU,
looked up by the name torch reports. float32 training on CUDA counts TF32's peak, since hfgpt
turns TF32 on; CPUs and unknown GPUs have no entry, and MFU is then reported as n/a.
"""

import re

import torch

TFLOPS = {  # a word of the device name -> {precision: dense TFLOPS}; more specific names first
    "H200": {"bf16": 989, "fp16": 989, "tf32": 494, "fp32": 67},
    "H100 PCIe": {"bf16": 756, "fp16": 756, "tf32": 378, "fp32": 51},
    "H100": {"bf16": 989, "fp16": 989, "tf32": 494, "fp32": 67},
    "A100": {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5},
    "L40S": {"bf16": 362, "fp16": 362, "tf32": 183, "fp32": 91.6},
    "L4": {"bf16": 121, "fp16": 121, "tf32": 60, "fp32": 30.3},
    "A10": {"bf16": 125, "fp16": 125, "tf32": 62.5, "fp32": 31.2},
    "RTX 4090": {"bf16": 165, "fp16": 165, "tf32": 82.6, "fp32": 82.6},
    "RTX 3090": {"bf16": 71, "fp16": 71, "tf32": 35.6, "fp32": 35.6},
    "V100": {"fp16": 125, "fp32": 15.7},
    "T4": {"fp16": 65, "fp32": 8.1},
}


def device_name(device_type: str) -> str:
    return torch.cuda.get_device_name() if device_type == "cuda" and torch.cuda.is_available() else device_type


def peak_flops(device_type: str, precision: str, name: str | None = None) -> float | None:
    """Peak FLOPS per device for 'no' (float32), 'fp16' or 'bf16' training, or None when unknown."""
    if device_type != "cuda":
        return None
    name = name or device_name(device_type)
    key = {"no": "tf32", "fp16": "fp16", "bf16": "bf16"}.get(precision, precision)
    for fragment, peaks in TFLOPS.items():
        if re.search(rf"\b{re.escape(fragment)}\b", name):  # "A10" is not "A100", "L4" not "L40S"
            value = peaks.get(key) or (peaks.get("fp32") if key == "tf32" else None)
            return value * 1e12 if value else None
    return None


def flops_per_token(model, block_size: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward + backward) plus attention's 12 L H Q T.
    Position embeddings are not counted (they are a lookup), as in nanoGPT's estimate_mfu."""
    c = model.config
    layers = getattr(c, "n_layer", None) or c.num_hidden_layers
    heads = getattr(c, "n_head", None) or c.num_attention_heads
    width = getattr(c, "n_embd", None) or c.hidden_size
    n = sum(p.numel() for p in model.parameters())
    wpe = getattr(getattr(model, "transformer", None), "wpe", None)
    if isinstance(wpe, torch.nn.Embedding):
        n -= wpe.weight.numel()
    return 6 * n + 12 * layers * heads * (width // heads) * block_size


def mfu(per_token: float, tokens_per_sec: float, peak: float | None) -> float | None:
    return per_token * tokens_per_sec / peak if peak else None
