"""nanoGPT's file formats: ckpt.pt state dicts and meta.pkl, read safely and mapped to GPT-2's.

    meta = read_meta_pkl("data/shakespeare_char/meta.pkl")     # plain dicts, strings and ints only
    model = hf_model_from_nanogpt(torch.load("ckpt.pt", weights_only=True))
    ckpt = nanogpt_checkpoint_from_hf(model)

nanoGPT's GPT mirrors GPT-2's parameter names, but uses nn.Linear where GPT-2 uses Conv1D (the
same matrix, transposed), has no biases with bias=False, uses the exact GELU, and ties lm_head
to wte.
"""

import pickle

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hfgpt.errors import UserError

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
COMPILED_PREFIX = "_orig_mod."


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every class and function reference (and persistent ids), so a hostile pickle cannot
    run code; read_meta_pkl then accepts only dicts, strings and ints."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in meta.pkl")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a persistent reference is not allowed in meta.pkl")


def read_meta_pkl(path) -> dict:
    """nanoGPT's meta.pkl ({'vocab_size', 'itos', 'stoi'}), read without running any code."""
    try:
        with open(path, "rb") as f:
            meta = _PlainUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"{path} is not a plain nanoGPT meta.pkl ({e}): only dicts of strings and ints are read") from None
    if not isinstance(meta, dict) or not _plain(meta):
        raise UserError(f"{path} holds something other than dicts of strings and ints: it is not nanoGPT's meta.pkl")
    stoi = meta.get("stoi")
    if (not isinstance(stoi, dict) or not all(isinstance(k, str) and len(k) == 1 for k in stoi)
            or len(set(stoi.values())) != len(stoi) or min(stoi.values(), default=0) < 0):
        raise UserError(f"{path} has no 'stoi' mapping single characters to distinct ids: it is not a char-level "
                        "nanoGPT meta.pkl")
    return meta


def _plain(value) -> bool:
    if type(value) is dict:
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return type(value) in (str, int)


def gpt2_config_from_nanogpt(args: dict) -> GPT2Config:
    dropout = args.get("dropout", 0.0)
    return GPT2Config(vocab_size=args["vocab_size"], n_positions=args["block_size"], n_embd=args["n_embd"],
                      n_layer=args["n_layer"], n_head=args["n_head"], embd_pdrop=dropout, attn_pdrop=dropout,
                      resid_pdrop=dropout, activation_function="gelu", layer_norm_epsilon=1e-5,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)


def hf_model_from_nanogpt(ckpt: dict) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel computing exactly what the nanoGPT checkpoint's GPT computes."""
    try:
        args, state = ckpt["model_args"], ckpt["model"]
    except (KeyError, TypeError):
        raise UserError("not a nanoGPT checkpoint: ckpt.pt needs 'model' and 'model_args' (as nanoGPT's train.py saves)") from None
    state = {k.removeprefix(COMPILED_PREFIX): v for k, v in state.items()}
    model = GPT2LMHeadModel(gpt2_config_from_nanogpt(args))
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
