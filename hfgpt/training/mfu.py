"""Model FLOPs utilization: the share of the device's peak FLOPS that training turns into model math.

    per_token = flops_per_token(model, block_size)        # 6N + 12 L H Q T for GPT-2, as nanoGPT and PaLM count
    peak = peak_flops("cuda", "bf16")                      # from the table below, None where unknown
    mfu(per_token, tokens_per_sec, peak)                   # 0.41, or None

The peaks are the dense (no sparsity) tensor-core figures from NVIDIA's data sheets, per GPU,
looked up by the name torch reports. float32 training on CUDA counts TF32's peak, since hfgpt
turns TF32 on; CPUs and unknown GPUs have no entry, and MFU is then reported as n/a.
"""

import re

import torch

from hfgpt.model.families import expert_share, model_shape, position_table

HOPPER_SXM = {"bf16": 989, "fp16": 989, "tf32": 494, "fp32": 67}
# (pattern, {precision: dense TFLOPS}) searched in the name torch reports, case-insensitively, in
# this order: the first match wins, so the more specific names come first ("H100 NVL" before
# "H100", "GH200" is not "H200", "A10G" is not "A10", "L40" is not "L4"). Figures from NVIDIA's
# data sheets (their sparse figures halved) except A10G, which has no NVIDIA sheet (AWS g5; the
# figure published by cloud providers). GeForce cards run bf16/fp16 with fp32 accumulate at half
# their fp16 rate; V100 and T4 have no bf16.
PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"\bGB200\b", {"bf16": 2500, "fp16": 2500, "tf32": 1250, "fp32": 80}),  # per GPU of a GB200 superchip
    (r"\bB200\b", {"bf16": 2250, "fp16": 2250, "tf32": 1100, "fp32": 75}),  # HGX B200, 1000 W
    (r"\bGH200\b", HOPPER_SXM),  # the Hopper GPU of a Grace Hopper superchip
    (r"\bH[12]00 NVL\b", {"bf16": 835, "fp16": 835, "tf32": 418, "fp32": 60}),
    (r"\bH100 PCIe\b", {"bf16": 756, "fp16": 756, "tf32": 378, "fp32": 51}),
    (r"\bH[128]00\b", HOPPER_SXM),  # H100 SXM, H800, H200 SXM
    (r"\bA100\b", {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5}),
    (r"\bA10G\b", {"bf16": 70, "fp16": 70, "tf32": 35, "fp32": 31.2}),
    (r"\bA10\b", {"bf16": 125, "fp16": 125, "tf32": 62.5, "fp32": 31.2}),
    (r"\bL40S\b", {"bf16": 362, "fp16": 362, "tf32": 183, "fp32": 91.6}),
    (r"\bL40\b", {"bf16": 181, "fp16": 181, "tf32": 90.5, "fp32": 90.5}),
    (r"\bL4\b", {"bf16": 121, "fp16": 121, "tf32": 60, "fp32": 30.3}),
    (r"\bRTX A6000\b", {"bf16": 154.8, "fp16": 154.8, "tf32": 77.4, "fp32": 38.7}),
    (r"\bRTX 4090\b", {"bf16": 165, "fp16": 165, "tf32": 82.6, "fp32": 82.6}),
    (r"\bRTX 3090\b", {"bf16": 71, "fp16": 71, "tf32": 35.6, "fp32": 35.6}),
    (r"\bV100S\b", {"fp16": 130, "fp32": 16.4}),
    (r"\bV100-PCIE\b", {"fp16": 112, "fp32": 14}),
    (r"\bV100\b", {"fp16": 125, "fp32": 15.7}),  # SXM2, SXM3
    (r"\bT4\b", {"fp16": 65, "fp32": 8.1}),
]


def device_name(device_type: str) -> str:
    return torch.cuda.get_device_name() if device_type == "cuda" and torch.cuda.is_available() else device_type


def peak_flops(device_type: str, precision: str, name: str | None = None) -> float | None:
    """Peak FLOPS per device for 'no' (float32), 'fp16' or 'bf16' training, or None when unknown."""
    if device_type != "cuda":
        return None
    name = name or device_name(device_type)
    key = {"no": "tf32", "fp16": "fp16", "bf16": "bf16"}.get(precision, precision)
    for pattern, peaks in PEAKS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            value = peaks.get(key) or (peaks.get("fp32") if key == "tf32" else None)
            return value * 1e12 if value else None
    return None


def flops_per_token(model, block_size: int) -> float:
    """Training FLOPs per token, counted from the model's real shape, as nanoGPT's and PaLM's 6N + 12 L H Q T:

    - 2 per weight in the forward and 2 in the backward's input gradients, for every weight a token
      multiplies (its grouped-query key/value projections and gated MLP's three matrices as they
      are; of a mixture of experts, the experts a token goes through); 2 more for the weight
      gradients of the trained ones only (LoRA: the adapters), so
      4N + 2N_trained, which is 6N when every weight trains. Lookups cost nothing: a position table
      and, unless it is tied to the output layer, the token embedding are not counted;
    - attention's scores and weighted sum, 12 per head dimension and key seen, per layer: T keys,
      or a sliding window's at most (Mistral, Gemma's local layers).

    Activation checkpointing's recomputed forward is not counted (model FLOPs, not hardware FLOPs)."""
    shape = model_shape(model.config)
    lookups = set()
    table = position_table(model)
    if table is not None:
        lookups.add(id(table.weight))
    embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
    if embedding is not None and (output is None or output.weight is not embedding.weight):
        lookups.add(id(embedding.weight))
    share = expert_share(model.config)
    n = trained = 0
    for name, p in model.named_parameters():  # tied weights once
        if id(p) in lookups:
            continue
        used = p.numel() * (share if ".experts." in name else 1)
        n += used
        trained += used if p.requires_grad else 0
    return 4 * n + 2 * trained + 12 * shape.n_head * shape.head_dim * shape.keys_seen(block_size)


def mfu(per_token: float, tokens_per_sec: float, peak: float | None) -> float | None:
    return per_token * tokens_per_sec / peak if peak else None
