"""The optimizer (AdamW, or Muon for the blocks' matrices) and the learning-rate schedule.

    optimizer = make_optimizer(model, recipe.optim, device_type="cpu")
    lr = set_lr(optimizer, iter_num, recipe.optim)   # every group at its lr for this iteration
    lr = get_lr(iter_num, recipe.optim)              # AdamW's learning rate at iter_num

optimizer: adamw  nanoGPT's AdamW: weight decay on tensors of 2+ dimensions, none on biases and norms.
optimizer: muon   Muon (torch.optim.Muon's update, batched: see BatchedMuon) on the 2-D weight
                  matrices inside the transformer blocks (GPT-2: attn.c_attn, attn.c_proj, mlp.c_fc,
                  mlp.c_proj), AdamW on everything else
                  (token and position embeddings, where wte is also the tied lm_head; LayerNorms;
                  biases), as modded-nanogpt and nanochat split them. Both are one torch Optimizer
                  (MuonAdamW), so its state_dict is one standard state dict: checkpoints save it as
                  AdamW's (safetensors + JSON) and a resume continues bitwise.

Muon's learning rate is muon_lr on the same schedule as learning_rate. GPT-2's Conv1D stores a
weight as (in, out), nn.Linear as (out, in): Muon's Newton-Schulz does not care (it transposes to
the wide side itself), and the per-matrix scale used here, torch's adjust_lr_fn="match_rms_adamw"
(0.2 x sqrt(the larger side)), does not either, while "original" (sqrt(rows / columns)) assumes
(out, in). That scale also makes muon_lr read like an AdamW learning rate. The Muon matrices are
not weight-decayed (weight_decay is AdamW's, for the embeddings).

BatchedMuon computes torch.optim.Muon's update with one set of ops per shape of matrix rather than
per matrix: the momentum of all matrices in one foreach op, Newton-Schulz once per shape on the
stacked (L, rows, columns) momenta with batched matmuls, one foreach update per shape, as
modded-nanogpt and nanochat batch it. GPT-2 124M's 48 matrices have 4 shapes: 118 ATen ops a step
instead of torch's 1,370 (python -m hfgpt.bench optim --optimizer=muon). Its state is torch's (a
momentum_buffer per matrix), so checkpoints of either load into the other.
"""

import dataclasses
import math

import torch

from hfgpt.config import OptimConfig
from hfgpt.core.errors import UserError
from hfgpt.model.families import transformer_blocks


def make_optimizer(model: torch.nn.Module, o: OptimConfig, device_type: str,
                   sharded: str | None = None) -> torch.optim.Optimizer:
    """AdamW, or MuonAdamW with optimizer: muon. `sharded`: the strategy's name when FSDP or DeepSpeed
    split the parameters (Muon needs whole matrices: refused)."""
    # One fused kernel per tensor: the fastest AdamW on CUDA and on the CPU (where torch's default is
    # a Python loop over tensors); MPS keeps the default.
    adamw = {"lr": o.learning_rate, "betas": (o.beta1, o.beta2), "fused": device_type in ("cuda", "cpu")}
    trained = [p for p in model.parameters() if p.requires_grad]
    if o.optimizer == "adamw":
        return torch.optim.AdamW(decay_groups(trained, o.weight_decay), **adamw)
    if sharded:
        raise UserError(f"optimizer=muon orthogonalizes whole matrices, which {sharded} splits across processes: "
                        "use optimizer: adamw with it, or plain data parallel (accelerate_configs/multi_gpu.yaml)")
    matrices = muon_params(model)
    ids = {id(p) for p in matrices}
    muon = {"lr": o.muon_lr, "momentum": o.muon_momentum, "weight_decay": 0.0, "nesterov": True,
            "adjust_lr_fn": "match_rms_adamw"}
    return MuonAdamW([{"params": matrices}], decay_groups([p for p in trained if id(p) not in ids], o.weight_decay),
                     muon, adamw)


def decay_groups(params: list[torch.Tensor], weight_decay: float) -> list[dict]:
    """AdamW's groups: weight decay on tensors of 2+ dimensions (matmuls, embeddings), none on biases and norms."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def muon_params(model: torch.nn.Module) -> list[torch.Tensor]:
    """The trained 2-D weights inside the transformer blocks: what Muon updates."""
    return [p for block in transformer_blocks(model) for p in block.parameters() if p.requires_grad and p.dim() == 2]


class MuonAdamW(torch.optim.Optimizer):
    """BatchedMuon and torch.optim.AdamW behind one Optimizer: its param_groups are Muon's
    groups then AdamW's (the very dicts the two step) and its state is theirs, so state_dict(),
    load_state_dict() and zero_grad() work as for any torch optimizer. Each group says which
    it is in group["muon"]."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], muon: dict, adamw: dict):
        self.muon = BatchedMuon([{**g, "muon": True} for g in muon_groups], **muon)
        self.adamw = torch.optim.AdamW([{**g, "muon": False} for g in adamw_groups], **adamw)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={})
        self._share()

    def _share(self) -> None:
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # new group dicts and state: the two step those from now on
        self._share()

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "MuonAdamW takes no closure"
        self.muon.step()
        self.adamw.step()


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon (its arguments, checks and state) with the update of all matrices of one shape
    computed together: torch's loops over the matrices in Python, ~28 ATen ops each, which on a GPU
    leaves the step bound by the host (GPT-2 124M: 1,370 ops a step; 118 here, the same for any depth).

    The arithmetic is torch's, op for op (lerp, bf16 Newton-Schulz with addmm's beta/alpha form,
    the norm clamped at eps, the lr scale from the shape), only batched: on the CPU the result is
    bitwise torch's (tests/test_optim.py); on CUDA, batched and single matmuls may pick different
    cuBLAS kernels, so it agrees to bf16 rounding."""

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "BatchedMuon takes no closure"
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            grads = [p.grad for p in params]
            momentum = group["momentum"]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
            shapes: dict = {}
            for p, update in zip(params, updates):
                shapes.setdefault((p.shape, p.dtype, p.device), []).append((p, update))
            for (shape, _, _), pairs in shapes.items():
                orthogonal = newton_schulz([u for _, u in pairs], group["ns_coefficients"], group["ns_steps"], group["eps"])
                matrices = [p for p, _ in pairs]
                if group["weight_decay"]:  # torch multiplies by 1 - lr * 0 too; skipping it changes no bit
                    torch._foreach_mul_(matrices, 1 - group["lr"] * group["weight_decay"])
                scale = group["lr"] * lr_scale(group["adjust_lr_fn"], shape)
                torch._foreach_add_(matrices, list(orthogonal.to(matrices[0].dtype).unbind(0)), alpha=-scale)


def lr_scale(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix learning-rate factor (its _adjust_lr)."""
    rows, columns = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / columns))
    return 0.2 * math.sqrt(max(rows, columns)) if adjust_lr_fn == "match_rms_adamw" else 1.0


def newton_schulz(updates: list[torch.Tensor], coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """torch.optim.Muon's Newton-Schulz orthogonalization of same-shaped matrices, stacked: (L, rows,
    columns) in bf16, each matrix scaled to unit Frobenius norm, iterated on its wide side."""
    a, b, c = coefficients
    x = torch.stack(updates).bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x.div_(torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps))
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)  # not `@`: matmul adds 5 view ops around each batched product
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def set_lr(optimizer, it: int, o: OptimConfig, lr_decay_iters: int | None = None, decay_from: list | None = None) -> float:
    """Set every group's learning rate for iteration `it` (Muon's groups: muon_lr on the same schedule)
    and return AdamW's, the one logged. `lr_decay_iters` overrides o's (a time budget's moved end);
    from decay_from = [iteration, lr] on, the rate falls linearly from lr to min_lr at lr_decay_iters."""
    o = o if lr_decay_iters is None else dataclasses.replace(o, lr_decay_iters=lr_decay_iters)
    if decay_from is not None and it >= decay_from[0]:
        start, rate = decay_from
        lr = rate + (it - start) / max(o.lr_decay_iters - start, 1) * (o.min_lr - rate)
    else:
        lr = get_lr(it, o)
    for group in optimizer.param_groups:
        group["lr"] = lr * o.muon_lr / o.learning_rate if group.get("muon") else lr
    return lr


def get_lr(it: int, o: OptimConfig) -> float:
    """learning_rate at iteration `it`: linear warmup over warmup_iters, then lr_schedule (cosine:
    nanoGPT's cosine decay to min_lr at lr_decay_iters; wsd: flat, then a linear decay to min_lr over
    the last decay_fraction of lr_decay_iters), then min_lr."""
    if not o.decay_lr:
        return o.learning_rate
    if it < o.warmup_iters:
        return o.learning_rate * (it + 1) / (o.warmup_iters + 1)
    if it > o.lr_decay_iters:
        return o.min_lr
    if o.lr_schedule == "wsd":
        decay_start = o.lr_decay_iters * (1 - o.decay_fraction)
        progress = max(it - decay_start, 0) / (o.lr_decay_iters - decay_start)  # 0 until the decay, 1 at its end
        return o.learning_rate + progress * (o.min_lr - o.learning_rate)
    decay_ratio = (it - o.warmup_iters) / (o.lr_decay_iters - o.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return o.min_lr + coeff * (o.learning_rate - o.min_lr)
