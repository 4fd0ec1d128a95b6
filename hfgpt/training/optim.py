"""AdamW with decay on matrices only, and nanoGPT's learning-rate schedule.

    optimizer = make_optimizer(model, recipe.optim, device_type="cuda")
    lr = get_lr(iter_num, recipe.optim)
"""

import math

import torch

from hfgpt.config import OptimConfig


def make_optimizer(model: torch.nn.Module, o: OptimConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW; weight decay on tensors of 2+ dimensions (matmuls, embeddings), none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # One fused kernel per tensor: the fastest AdamW on CUDA and on the CPU (where torch's default is
    # a Python loop over tensors); MPS keeps the default.
    fused = device_type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=o.learning_rate, betas=(o.beta1, o.beta2), fused=fused)


def get_lr(it: int, o: OptimConfig) -> float:
    """Linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not o.decay_lr:
        return o.learning_rate
    if it < o.warmup_iters:
        return o.learning_rate * (it + 1) / (o.warmup_iters + 1)
    if it > o.lr_decay_iters:
        return o.min_lr
    decay_ratio = (it - o.warmup_iters) / (o.lr_decay_iters - o.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return o.min_lr + coeff * (o.learning_rate - o.min_lr)
