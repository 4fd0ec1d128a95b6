"""Convert nanoGPT checkpoints to Hugging Face model folders and back.

    python -m hfgpt.convert to-hf out-shakespeare-char/ckpt.pt hf-shakespeare-char --meta=data/shakespeare_char/meta.pkl
    python -m hfgpt.convert to-hf out-finetune/ckpt.pt hf-finetune --tokenizer=gpt2
    python -m hfgpt.convert to-nanogpt out-shakespeare-char-cpu nanogpt-shakespeare --dataset=shakespeare_char

to-hf reads ckpt.pt with torch.load(weights_only=True) and meta.pkl without running pickled code,
and writes a folder that `pipeline("text-generation")` loads: the tokenizer comes from --meta (a
char model), --tokenizer (a Hub id or folder), or, as nanoGPT's sample.py finds it,
data/<dataset>/meta.pkl; GPT-2's BPE otherwise. to-nanogpt writes DEST/ckpt.pt (and, for a char
model, DEST/meta.pkl to copy into nanoGPT's data/<dataset>/) for nanoGPT's sample.py. These two
files are nanoGPT's pickle formats, written only because nanoGPT reads nothing else.
"""

import argparse
import os
import pickle
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from hfgpt.errors import UserError, cli
from hfgpt.model import set_generation_defaults
from hfgpt.nanogpt import hf_model_from_nanogpt, nanogpt_checkpoint_from_hf, read_meta_pkl
from hfgpt.tokenizer import EOT, char_tokenizer_from_stoi, load_tokenizer


def _tokenizer_for(ckpt: dict, ckpt_path: Path, meta: str | None, tokenizer: str | None):
    if meta is None and tokenizer is None:
        dataset = (ckpt.get("config") or {}).get("dataset")
        guess = Path("data") / str(dataset) / "meta.pkl"
        meta = str(guess) if dataset and guess.exists() else None
    if meta is not None:
        return char_tokenizer_from_stoi(read_meta_pkl(meta)["stoi"])
    return load_tokenizer(tokenizer or "gpt2")


def to_hf(src: str, dest: str, meta: str | None, tokenizer: str | None) -> None:
    path = Path(src)
    if not path.is_file():
        raise UserError(f"{src} not found: give the ckpt.pt that nanoGPT's train.py wrote in its out_dir")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise UserError(f"{src} could not be read as a nanoGPT checkpoint with weights_only=True ({e})") from None
    model = hf_model_from_nanogpt(ckpt)
    tok = _tokenizer_for(ckpt, path, meta, tokenizer)
    eot = tok.convert_tokens_to_ids(EOT) if EOT in tok.get_vocab() else tok.eos_token_id
    eot = eot if eot is not None and eot < model.config.vocab_size else None  # a char model's eot is past its vocab
    model.config.bos_token_id = model.config.eos_token_id = eot
    set_generation_defaults(model, model.config.n_positions, eot)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    print(f"wrote {dest}: {model.config.n_layer} layers x {model.config.n_embd}, vocab {model.config.vocab_size:,}, "
          f"block_size {model.config.n_positions}, trained {ckpt.get('iter_num', '?')} iterations; "
          f"sample with: python -m hfgpt.sample {dest}")


def to_nanogpt(src: str, dest: str, dataset: str | None) -> None:
    try:
        model = AutoModelForCausalLM.from_pretrained(src)
    except OSError as e:
        raise UserError(f"{src} is not a model folder ({str(e).splitlines()[0]}): give an hfgpt out_dir") from None
    if model.config.activation_function != "gelu":
        print(f"note: {src} uses activation {model.config.activation_function}; nanoGPT's GPT uses the exact GELU, "
              "so its outputs will differ slightly (as with nanoGPT's own GPT-2 import)")
    ckpt = nanogpt_checkpoint_from_hf(model, dataset)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / "ckpt.pt", lambda f: torch.save(ckpt, f))
    meta = _char_meta(src, model.config.vocab_size)
    if meta:
        _atomic(out / "meta.pkl", lambda f: pickle.dump(meta, f))
    where = f"data/{dataset}/meta.pkl" if dataset else "data/<dataset>/meta.pkl (and pass --dataset)"
    print(f"wrote {out / 'ckpt.pt'}" + (f" and {out / 'meta.pkl'} (copy it to nanoGPT's {where})" if meta else "")
          + f"; in nanoGPT: python sample.py --out_dir={out}")


def _char_meta(src: str, vocab_size: int) -> dict | None:
    """nanoGPT's meta.pkl contents for a char-level tokenizer (special tokens decode to ''), or None."""
    try:
        tok = load_tokenizer(src)
    except UserError:
        return None
    special = set(tok.all_special_tokens)
    vocab = {t: i for t, i in tok.get_vocab().items() if i < vocab_size}
    stoi = {t: i for t, i in vocab.items() if t not in special}
    if not stoi or not all(len(t) == 1 for t in stoi):
        return None
    itos = {i: ("" if t in special else t) for t, i in vocab.items()}
    return {"vocab_size": vocab_size, "stoi": stoi, "itos": itos}


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m hfgpt.convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("to-hf", help="nanoGPT ckpt.pt -> Hugging Face model folder")
    a.add_argument("ckpt", help="nanoGPT's ckpt.pt")
    a.add_argument("dest", help="the model folder to write")
    a.add_argument("--meta", help="nanoGPT's meta.pkl of a char-level model")
    a.add_argument("--tokenizer", help="a Hub tokenizer id or folder (default: gpt2)")
    b = sub.add_parser("to-nanogpt", help="Hugging Face GPT-2 model folder -> nanoGPT ckpt.pt")
    b.add_argument("model", help="an hfgpt out_dir or any GPT-2 model folder")
    b.add_argument("dest", help="folder for ckpt.pt (nanoGPT's --out_dir)")
    b.add_argument("--dataset", help="nanoGPT dataset name recorded in ckpt.pt, where sample.py looks for meta.pkl")
    return p.parse_args(argv)


@cli
def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.direction == "to-hf":
        to_hf(args.ckpt, args.dest, args.meta, args.tokenizer)
    else:
        to_nanogpt(args.model, args.dest, args.dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
