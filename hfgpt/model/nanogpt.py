"""nanoGPT's checkpoints: ckpt.pt state dicts mapped to GPT-2's and back (meta.pkl: hfgpt.data.nanogpt_data).

    model = hf_model_from_nanogpt(torch.load("ckpt.pt", weights_only=True))
    ckpt = nanogpt_checkpoint_from_hf(model)

nanoGPT's GPT mirrors GPT-2's parameter names, but uses nn.Linear where GPT-2 uses Conv1D (the
same matrix, transposed), has no biases with bias=False, uses the exact GELU, and ties lm_head
to wte.
"""

import torch
from transformers import GPT2LMHeadModel

from hfgpt.core.errors import UserError
from hfgpt.model.families.gpt2 import gpt2_config
from hfgpt.model.gpt import COMPILED_PREFIX

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_model_from_nanogpt(ckpt: dict) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel computing exactly what the nanoGPT checkpoint's GPT computes."""
    try:
        args, state = ckpt["model_args"], ckpt["model"]
    except (KeyError, TypeError):
        raise UserError("not a nanoGPT checkpoint: ckpt.pt needs 'model' and 'model_args' "
                        "(as nanoGPT's train.py saves)") from None
    state = {k.removeprefix(COMPILED_PREFIX): v for k, v in state.items()}
    model = GPT2LMHeadModel(gpt2_config(vocab_size=args["vocab_size"], block_size=args["block_size"], n_embd=args["n_embd"],
                                        n_layer=args["n_layer"], n_head=args["n_head"], dropout=args.get("dropout", 0.0)))
    ours = model.state_dict()
    converted = {}
    for key, target in ours.items():
        if key == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        if key in state:
            value = state[key]
            converted[key] = value.t() if key.endswith(CONV1D) else value
        elif key.endswith(".bias"):
            converted[key] = torch.zeros_like(target)  # nanoGPT's bias=False: the same as zero biases
        else:
            raise UserError(f"the nanoGPT checkpoint lacks {key}: it does not match its model_args")
        if converted[key].shape != target.shape:
            raise UserError(f"{key} has shape {tuple(converted[key].shape)} in the checkpoint, expected "
                            f"{tuple(target.shape)} from its model_args")
    model.load_state_dict(converted, strict=False)
    model.tie_weights()
    return model.eval()


def nanogpt_checkpoint_from_hf(model, dataset: str | None = None) -> dict:
    """A dict that nanoGPT's train.py (init_from=resume) and sample.py load as their ckpt.pt."""
    c = model.config
    if c.model_type != "gpt2" or (c.n_inner not in (None, 4 * c.n_embd)):
        raise UserError(f"only GPT-2 models with a 4x MLP convert to nanoGPT, not model_type={c.model_type}")
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith(".attn.bias")}
    biases = [v for k, v in state.items() if k.endswith(".bias")]
    bias = any(torch.count_nonzero(b) for b in biases)
    out = {}
    for key, value in state.items():
        if key.endswith(".bias") and not bias:
            continue
        out[key] = value.t().contiguous() if key.endswith(CONV1D) else value
    out["lm_head.weight"] = out["transformer.wte.weight"]
    args = {"n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "block_size": c.n_positions,
            "bias": bool(bias), "vocab_size": c.vocab_size, "dropout": c.resid_pdrop}
    return {"model": out, "model_args": args, "iter_num": 0, "best_val_loss": 1e9,
            "config": {"dataset": dataset} if dataset else {}}
