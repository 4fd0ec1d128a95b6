"""The next-token loss of a causal LM without its (B, T, vocab) float32 logits: the output layer and
the cross-entropy taken a chunk of rows at a time.

    loss = chunked_lm_loss(model, x, y)             # x, y: (B, T); the same loss as lm_loss(model, x, y)
    base, head = output_layer(model)                # the decoder (ids -> final hidden states) and lm_head, or None
    loss = linear_cross_entropy(hidden, head.weight, targets)   # hidden (N, C), targets (N,)

Where training runs the head eagerly (FSDP and DeepSpeed compile the blocks only), lm_loss's
`logits.float()` is a float32 (B, T, vocab) copy, and cross-entropy's log-softmax another one kept
for the backward: for GPT-2 124M at 12 x 1024 tokens, 2.5 GB each. Here each chunk of rows
(CHUNK_ELEMENTS logits at most) has its logits, its loss and its logits' gradient (softmax minus the
one-hot target) computed in one go, and the gradient is multiplied into the hidden states' and the
head weight's gradients at once (as Liger-Kernel's fused linear cross-entropy does): the float32
logits of one chunk exist at a time, the matmuls are the usual three (no recompute), and what the
backward keeps is two gradients of the size of the hidden states and of the head weight. The
matmuls run in autocast's dtype, as the head's own would, and the logits' gradient is cast to it
before them, as autocast's backward casts it.

It is taken only where the model's logits are exactly its output layer applied to its decoder's
final hidden states: output_layer() checks that on a few tokens (logit soft-capping or scaling, a
head with a bias or wrapped by LoRA: None, and lm_loss is used).
"""

import torch
import torch.nn.functional as F

# float32 logits per chunk (128 MB): GPT-2's 50,304 ids make chunks of 667 rows
CHUNK_ELEMENTS = 2**25


def output_layer(model) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(decoder, head) such that model(x).logits == head(decoder(x).last_hidden_state), checked on a
    few tokens (on the model's device, in eval mode, no gradients), or None."""
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model  # peft
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    if type(head) is not torch.nn.Linear or head.bias is not None or decoder is None or decoder is inner:
        return None
    ids = torch.arange(4, device=head.weight.device)[None] % head.out_features
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits
            mine = head(decoder(input_ids=ids, use_cache=False)[0])
    finally:
        model.train(training)
    return (decoder, head) if logits.shape == mine.shape and torch.allclose(logits, mine, rtol=1e-4, atol=1e-5) else None


def chunked_lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """lm_loss(model, x, y) through output_layer(model), which must not be None."""
    decoder, head = output_layer_unchecked(model)
    hidden = decoder(input_ids=x, use_cache=False)[0]  # (B, T, C): the final hidden states, normed
    return linear_cross_entropy(hidden.flatten(0, 1), head.weight, y.reshape(-1))


def output_layer_unchecked(model) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """output_layer() without the check (it ran once, when the loss module was made)."""
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return inner.get_decoder(), inner.get_output_embeddings()


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the logits hidden @ weight.T (N, V) against targets (N,), chunk by chunk."""
    rows = max(1, CHUNK_ELEMENTS // weight.size(0))
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(hidden, weight, targets, rows)
    total = sum(F.cross_entropy((hidden[i:i + rows] @ weight.T).float(), targets[i:i + rows], reduction="sum")
                for i in range(0, hidden.size(0), rows))
    return total / hidden.size(0)


class LinearCrossEntropy(torch.autograd.Function):
    """The forward computes the loss and both gradients (for a loss gradient of 1) chunk by chunk;
    the backward scales them by the incoming gradient over N."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, rows):
        n = hidden.size(0)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for i in range(0, n, rows):
            h, t = hidden[i:i + rows], targets[i:i + rows, None]
            logits = h @ weight.T  # (rows, V), in autocast's dtype
            dtype = logits.dtype
            logits = logits.float()  # the only float32 logits: this chunk's
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            loss += (lse - logits.gather(1, t)).sum()
            grad = logits.sub_(lse).exp_()  # softmax, in place: d(sum of losses)/d(logits) = softmax - one-hot
            grad.scatter_add_(1, t, torch.full(t.shape, -1.0, device=grad.device))
            grad = grad.to(dtype)
            if grad_hidden is not None:
                grad_hidden[i:i + rows] = grad @ weight
            if grad_weight is not None:
                grad_weight += grad.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.n, ctx.weight_dtype = n, weight.dtype
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss / ctx.n
        return (grad_hidden * scale.to(grad_hidden.dtype) if grad_hidden is not None else None,
                (grad_weight * scale).to(ctx.weight_dtype) if grad_weight is not None else None, None, None)
