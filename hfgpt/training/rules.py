"""The rules a time budget's plan follows (hfgpt.training.budget), each with the measurements behind
it (docs/speed.md, The budget on many corpora; scripts/corpora.py builds the corpora).

    rules.candidates("cpu")                     # model shapes to measure, small to large
    rules.predicted_loss(n, tokens, 1_000_000, "char")
    rules.optimizer(iterations=400, n_embd=128) # Muon + AdamW, WSD, warmup
"""

import re
from pathlib import Path

ARCHITECTURE = "gpt2"
# (n_layer, n_embd), small to large: the shapes a plan measures (heads of 32 dimensions up to 192
# wide, 64 above, as nanoGPT's and GPT-2's)
CANDIDATES = [(1, 128), (2, 128), (2, 192), (3, 192), (4, 256), (6, 256), (6, 384), (8, 512), (12, 768), (16, 1024),
              (24, 1024), (24, 1536), (32, 2048)]
GIVE_UP = 0.02  # a candidate this much worse than the best so far: larger ones are not measured
SAFETY = 0.95  # of the time left, the share planned for iterations (the deadline absorbs the rest)
AFTER_S = 2.5  # after the last iteration: the final evaluation, the model folder, a checkpoint, the card, exit
# predicted loss (nats per token, up to a constant of the text): A / N^alpha + B / D^beta, N the
# weights inside the blocks, D the tokens trained on (repeats count less: see effective_tokens)
A, ALPHA, B, BETA = 3.2, 0.20, 42.0, 0.28
REPEAT_HALF_LIFE = 15.0  # epochs over which repeated tokens lose their worth (Muennighoff et al. 2023's R*)


def candidates(device_type: str) -> list[tuple[int, int]]:
    return CANDIDATES if device_type != "cpu" else CANDIDATES[:8]


def heads(n_embd: int) -> int:
    return max(1, n_embd // 32) if n_embd <= 192 else n_embd // 64


def block_size(budget_s: float) -> int:
    return 64 if budget_s < 600 else 128 if budget_s < 3600 else 256


def batch_rows(block: int) -> int:
    return max(1, 3072 // block)  # 48 x 64 tokens a step


def non_embedding_params(m) -> int:
    """Weights inside the transformer blocks of a GPT-2 block of m's shape: 4 d^2 attention, 8 d^2 MLP."""
    return 12 * m.n_layer * m.n_embd ** 2


def iterations(left_s: float, step_s: float) -> int:
    """Iterations that fit in `left_s` seconds of budget, at `step_s` each, after AFTER_S."""
    return max(1, int((left_s - AFTER_S) * SAFETY / step_s))


def effective_tokens(tokens: float, unique: float) -> float:
    """Tokens worth of fresh text: the first pass counts whole, each repeat less (data-constrained scaling)."""
    if tokens <= unique:
        return tokens
    repeats = tokens / unique - 1
    return unique * (1 + REPEAT_HALF_LIFE * (1 - pow(2.718281828, -repeats / REPEAT_HALF_LIFE)))


def predicted_loss(n: int, tokens: int, unique_tokens: int, tokenizer: str) -> float:
    return A / max(n, 1) ** ALPHA + B / max(effective_tokens(tokens, max(unique_tokens, 1)), 1) ** BETA


def optimizer(iterations: int, n_embd: int) -> dict:
    return {"optimizer": "muon", "muon_lr": 0.02, "muon_momentum": 0.9 if iterations < 1000 else 0.95,
            "learning_rate": 6e-3, "min_lr": 6e-4, "beta2": 0.99, "weight_decay": 0.1, "lr_schedule": "wsd",
            "decay_fraction": 0.4, "warmup_iters": max(1, min(100, iterations // 5))}


def regularization(epochs: float) -> dict:
    """Dropout by passes over the training text. In a run of a budget's length dropout costs more
    than it saves until the text has been seen ~20 times (bench race, 35 s, one thread, AMD EPYC):
    the 100 KB corpus at 13 passes (1 x 128) scored 1.4572 without dropout, 1.6031 with 0.1 (nanoGPT's
    fixed recipe 1.4786); Russian 1.4159 without (3.8 passes), 1.7880 with 0.1 (nanoGPT 1.6299); a
    dropout step is also slower (54 -> 75 ms, which the plan times). Without dropout the 100 KB
    corpus's 1 x 128 gets worse from ~15 passes on (1.5005 at 8.5 passes, 1.5189 at 20)."""
    return {"dropout": 0.0 if epochs < 20 else 0.1}


def eval_batches(iterations: int) -> int:
    return 4


def dataset_name(source: str) -> str:
    """A dataset folder name from a source: its file or folder name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(source).rstrip("/")).stem).strip("-.")
    return name or "dataset"
