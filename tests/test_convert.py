"""nanoGPT <-> Hugging Face conversion: logits equal a reference nanoGPT forward pass, both ways,
with bias True and False, and meta.pkl is read without running code."""

import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel, pipeline

from hfgpt import convert
from hfgpt.core.errors import UserError
from hfgpt.data.nanogpt_data import read_meta_pkl

ARGS = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 12, "vocab_size": 20, "dropout": 0.0}
CHARS = "\n !,.:;?ABCDEFGHIJKL"  # 20 characters, sorted


def nanogpt_state_dict(bias: bool, seed: int = 0) -> dict:
    """Random weights under the names and shapes nanoGPT's model.py gives them (nn.Linear: out x in)."""
    g = torch.Generator().manual_seed(seed)
    C, V, T = ARGS["n_embd"], ARGS["vocab_size"], ARGS["block_size"]

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    sd = {"transformer.wte.weight": r(V, C), "transformer.wpe.weight": r(T, C), "transformer.ln_f.weight": 1 + r(C)}
    for i in range(ARGS["n_layer"]):
        p = f"transformer.h.{i}."
        sd.update({p + "ln_1.weight": 1 + r(C), p + "ln_2.weight": 1 + r(C), p + "attn.c_attn.weight": r(3 * C, C),
                   p + "attn.c_proj.weight": r(C, C), p + "mlp.c_fc.weight": r(4 * C, C), p + "mlp.c_proj.weight": r(C, 4 * C)})
        if bias:
            sd.update({p + "ln_1.bias": r(C), p + "ln_2.bias": r(C), p + "attn.c_attn.bias": r(3 * C),
                       p + "attn.c_proj.bias": r(C), p + "mlp.c_fc.bias": r(4 * C), p + "mlp.c_proj.bias": r(C)})
    if bias:
        sd["transformer.ln_f.bias"] = r(C)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied, as in nanoGPT
    return sd


def reference_forward(sd: dict, idx: torch.Tensor) -> torch.Tensor:
    """nanoGPT's GPT.forward (targets given: logits at every position), written out with plain torch."""
    B, T = idx.shape
    C, H = ARGS["n_embd"], ARGS["n_head"]

    def ln(x, name):
        return F.layer_norm(x, (C,), sd[name + ".weight"], sd.get(name + ".bias"), 1e-5)

    def linear(x, name):
        return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))

    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(ARGS["n_layer"]):
        p = f"transformer.h.{i}."
        q, k, v = linear(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        y = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1) @ v
        x = x + linear(y.transpose(1, 2).reshape(B, T, C), p + "attn.c_proj")
        x = x + linear(F.gelu(linear(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return F.linear(ln(x, "transformer.ln_f"), sd["lm_head.weight"])


def write_nanogpt_run(folder: Path, bias: bool, compiled: bool) -> dict:
    sd = nanogpt_state_dict(bias)
    stored = {("_orig_mod." + k if compiled else k): v for k, v in sd.items()}
    torch.save({"model": stored, "model_args": {**ARGS, "bias": bias}, "iter_num": 250,
                "best_val_loss": torch.tensor(1.5), "config": {"dataset": "toy"}}, folder / "ckpt.pt")
    stoi = {c: i for i, c in enumerate(CHARS)}
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 20, "itos": {i: c for c, i in stoi.items()}, "stoi": stoi}, f)
    return sd


@pytest.mark.parametrize("bias, compiled", [(True, False), (False, False), (False, True)])
def test_to_hf_logits_equal_nanogpt_and_back(tmp_path, bias, compiled):
    sd = write_nanogpt_run(tmp_path, bias, compiled)
    assert convert.main(["to-hf", str(tmp_path / "ckpt.pt"), str(tmp_path / "hf"), f"--meta={tmp_path / 'meta.pkl'}"]) == 0
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert model.config.activation_function == "gelu"
    idx = torch.randint(0, 20, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(idx).logits, reference_forward(sd, idx), atol=1e-4)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # still tied

    assert convert.main(["to-nanogpt", str(tmp_path / "hf"), str(tmp_path / "back"), "--dataset=toy"]) == 0
    back = torch.load(tmp_path / "back" / "ckpt.pt", weights_only=True)
    assert back["model_args"] == {**ARGS, "bias": bias}
    assert back["config"] == {"dataset": "toy"}
    assert back["model"].keys() == sd.keys()
    assert all(torch.equal(back["model"][k], sd[k]) for k in sd)
    meta = read_meta_pkl(tmp_path / "back" / "meta.pkl")
    assert meta["stoi"] == {c: i for i, c in enumerate(CHARS)}


def test_converted_char_model_samples_through_pipeline(tmp_path):
    write_nanogpt_run(tmp_path, bias=True, compiled=False)
    assert convert.main(["to-hf", str(tmp_path / "ckpt.pt"), str(tmp_path / "hf"), f"--meta={tmp_path / 'meta.pkl'}"]) == 0
    pipe = pipeline("text-generation", model=str(tmp_path / "hf"))
    text = pipe("ABC", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("ABC") and len(text) == 11 and set(text) <= set(CHARS)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_meta_pkl_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"stoi": {"a": 0}, "x": _Evil(str(marker))}))
    with pytest.raises(UserError, match="not allowed"):
        read_meta_pkl(tmp_path / "meta.pkl")
    assert not marker.exists()


def test_not_a_nanogpt_checkpoint(tmp_path, capsys):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "ckpt.pt")
    assert convert.main(["to-hf", str(tmp_path / "ckpt.pt"), str(tmp_path / "hf")]) == 2
    assert "not a nanoGPT checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
