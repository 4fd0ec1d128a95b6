"""Convert nanoGPT checkpoints to Hugging Face model folders and back.

    hfgpt convert to-hf out-shakespeare-char/ckpt.pt hf-shakespeare-char --meta=data/shakespeare_char/meta.pkl
    python -m hfgpt.convert to-hf out-finetune/ckpt.pt hf-finetune --tokenizer=gpt2
    python -m hfgpt.convert to-nanogpt out-shakespeare-char-cpu nanogpt-shakespeare --dataset=shakespeare_char

to-hf reads ckpt.pt with torch.load(weights_only=True) and meta.pkl without running pickled code,
and writes a folder that `pipeline("text-generation")` loads: the tokenizer comes from --meta (a
char model), --tokenizer (a Hub id or folder), or, as nanoGPT's sample.py finds it,
data/<dataset>/meta.pkl; GPT-2's BPE otherwise. to-nanogpt writes DEST/ckpt.pt (and, for a char
model, DEST/meta.pkl to copy into nanoGPT's data/<dataset>/) for nanoGPT's sample.py. These two
files are nanoGPT's pickle formats, written only because nanoGPT reads nothing else.

DEST is written as training writes out_dir: into a temporary folder beside it, swapped in whole
(a killed convert leaves DEST as it was, and the next convert removes its temporary folder); the
files DEST held besides are kept. A DEST that holds a model, a training run or a ckpt.pt is
refused unless --overwrite=True, and one a training run holds (its .lock) always.
"""

import os
import pickle
import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from hfgpt.config import Command, Parsed, command, option
from hfgpt.core.errors import UserError, cli, first_line


@dataclass
class ToHfOptions:
    ckpt: str = option(positional=True)
    """nanoGPT's ckpt.pt."""
    dest: str = option(positional=True)
    """The model folder to write."""
    meta: str | None = option(None)
    """nanoGPT's meta.pkl of a char-level model."""
    tokenizer: str | None = option(None)
    """A Hub tokenizer id or folder; None: data/<dataset>/meta.pkl when it exists, else gpt2."""
    overwrite: bool = option(False)
    """Replace the model or training run that DEST holds (its files; DEST's other files are kept)."""


@dataclass
class ToNanogptOptions:
    model: str = option(positional=True)
    """An hfgpt out_dir or any GPT-2 model folder."""
    dest: str = option(positional=True)
    """Folder for ckpt.pt (nanoGPT's --out_dir)."""
    dataset: str | None = option(None)
    """nanoGPT dataset name recorded in ckpt.pt, where sample.py looks for meta.pkl."""
    overwrite: bool = option(False)
    """Replace the ckpt.pt, model or training run that DEST holds (DEST's other files are kept)."""


TMP = ".tmp-convert-"  # the folder a convert writes in, beside DEST (make_temp_dir adds <host>-<pid>)
NANOGPT_FILES = ("ckpt.pt", "meta.pkl")


@contextmanager
def output_folder(dest: str, overwrite: bool, writes: tuple[str, ...] = ()) -> Iterator[Path]:
    """A temporary folder beside DEST that becomes DEST when the block ends without an error (one
    swap: whole or absent). DEST's other files are hard-linked into it first, so they stay; with
    overwrite, the files of the model or run DEST held (and `writes`, the names this command
    writes) are not. Refused: DEST a file, the working folder or above it, in use by a training
    run, or holding a model, a run or one of `writes` (without overwrite)."""
    from hfgpt.core.files import make_temp_dir, remove_dead_temp, replace_dir, sync_tree
    from hfgpt.core.lock import LOCK, hold_lock
    from hfgpt.training.out_dir import earlier_run, run_files

    out = Path(dest)
    if out.exists() and not out.is_dir():
        raise UserError(f"{dest} is a file: give the folder to write, e.g. {out.with_suffix('')}-converted")
    if out.exists() and out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
        raise UserError(f"{dest} is the working folder or above it: give a new folder to write, e.g. {out / 'converted'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temp(out.parent, (TMP,))  # what a killed convert left
    with ExitStack() as stack:
        replaced: set[str] = set()
        if out.is_dir():
            stack.enter_context(hold_lock(out, "wait for that run to end, or convert into another folder"))
            found = earlier_run(out) + [name for name in writes if (out / name).exists()]
            if found and not overwrite:
                raise UserError(f"{dest} holds {', '.join(found)}: convert into a new folder, or replace it with "
                                "--overwrite=True (the other files there are kept)")
            replaced = {p.name for p in run_files(out)} | set(writes) if overwrite else set()
        tmp = make_temp_dir(out.parent, TMP)
        try:
            yield tmp
            for entry in sorted(out.iterdir()) if out.is_dir() else []:
                if entry.name != LOCK and entry.name not in replaced and not (tmp / entry.name).exists():
                    _link(entry, tmp / entry.name)
            if out.is_dir():
                replace_dir(tmp, out)
            else:
                sync_tree(tmp)
                os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _link(src: Path, dst: Path) -> None:
    """Put `src` at `dst` too, without copying bytes where the file system has hard links."""
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=link)
    elif src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        link(src, dst)


SUMMARY = __doc__.split("\n\n")[0]


def _tokenizer_for(ckpt: dict, meta: str | None, tokenizer: str | None):
    from hfgpt.data.nanogpt_data import read_meta_pkl
    from hfgpt.data.tokenizer import char_tokenizer_from_stoi, load_tokenizer

    if meta is None and tokenizer is None:
        dataset = (ckpt.get("config") or {}).get("dataset")
        guess = Path("data") / str(dataset) / "meta.pkl"
        meta = str(guess) if dataset and guess.exists() else None
    if meta is not None:
        return char_tokenizer_from_stoi(read_meta_pkl(meta)["stoi"])
    return load_tokenizer(tokenizer or "gpt2")


def to_hf(src: str, dest: str, meta: str | None, tokenizer: str | None, overwrite: bool = False) -> None:
    import torch

    from hfgpt.data.tokenizer import eot_id
    from hfgpt.model.folder import write_model_files
    from hfgpt.model.gpt import set_generation_defaults
    from hfgpt.model.nanogpt import hf_model_from_nanogpt

    path = Path(src)
    if not path.is_file():
        raise UserError(f"{src} not found: give the ckpt.pt that nanoGPT's train.py wrote in its out_dir")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise UserError(f"{src} could not be read as a nanoGPT checkpoint with weights_only=True "
                        f"({first_line(e)})") from None
    model = hf_model_from_nanogpt(ckpt)
    tok = _tokenizer_for(ckpt, meta, tokenizer)
    eot = eot_id(tok)
    eot = eot if eot is not None and eot < model.config.vocab_size else None  # a char model's eot is past its vocab
    model.config.bos_token_id = model.config.eos_token_id = eot
    set_generation_defaults(model, model.config.n_positions, eot)
    with output_folder(dest, overwrite) as folder:
        write_model_files(model, None, tok, folder)
    print(f"wrote {dest}: {model.config.n_layer} layers x {model.config.n_embd}, vocab {model.config.vocab_size:,}, "
          f"block_size {model.config.n_positions}, trained {ckpt.get('iter_num', '?')} iterations; "
          f"sample with: python -m hfgpt.sample {dest}")


def to_nanogpt(src: str, dest: str, dataset: str | None, overwrite: bool = False) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hfgpt.model.folder import check_model_folder
    from hfgpt.model.nanogpt import nanogpt_checkpoint_from_hf

    try:
        config = AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise UserError(f"{src} is not a model folder ({first_line(e)}): give an hfgpt out_dir") from None
    if config.model_type != "gpt2":  # before any weight is read
        raise UserError(f"{src} is a {config.model_type} model ({(config.architectures or ['?'])[0]}): only GPT-2 "
                        "models convert to nanoGPT, whose GPT is GPT-2's block; the folder itself loads in transformers")
    check_model_folder(src)
    try:
        model = AutoModelForCausalLM.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise UserError(f"{src} is not a model folder ({first_line(e)}): give an hfgpt out_dir") from None
    if model.config.activation_function != "gelu":
        print(f"note: {src} uses activation {model.config.activation_function}; nanoGPT's GPT uses the exact GELU, "
              "so its outputs will differ slightly (as with nanoGPT's own GPT-2 import)")
    ckpt = nanogpt_checkpoint_from_hf(model, dataset)
    out = Path(dest)
    meta = _char_meta(src, model.config.vocab_size)
    with output_folder(dest, overwrite, writes=NANOGPT_FILES) as folder:
        with open(folder / "ckpt.pt", "wb") as f:
            torch.save(ckpt, f)
        if meta:
            with open(folder / "meta.pkl", "wb") as f:
                pickle.dump(meta, f)
    where = f"data/{dataset}/meta.pkl" if dataset else "data/<dataset>/meta.pkl (and pass --dataset)"
    print(f"wrote {out / 'ckpt.pt'}" + (f" and {out / 'meta.pkl'} (copy it to nanoGPT's {where})" if meta else "")
          + f"; in nanoGPT: python sample.py --out_dir={out}")


def _char_meta(src: str, vocab_size: int) -> dict | None:
    """nanoGPT's meta.pkl contents for a char-level tokenizer (special tokens decode to ''), or None."""
    from hfgpt.data.tokenizer import load_tokenizer

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


@command(Command("convert to-hf", "nanoGPT ckpt.pt -> Hugging Face model folder.", options=ToHfOptions))
def main_to_hf(parsed: Parsed) -> int:
    o = parsed.options
    to_hf(o.ckpt, o.dest, o.meta, o.tokenizer, o.overwrite)
    return 0


@command(Command("convert to-nanogpt", "Hugging Face GPT-2 model folder -> nanoGPT ckpt.pt.", options=ToNanogptOptions))
def main_to_nanogpt(parsed: Parsed) -> int:
    o = parsed.options
    to_nanogpt(o.model, o.dest, o.dataset, o.overwrite)
    return 0


DIRECTIONS = {"to-hf": main_to_hf, "to-nanogpt": main_to_nanogpt}


@cli
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DIRECTIONS:
        return DIRECTIONS[argv[0]](argv[1:])
    if argv and argv[0] not in ("-h", "--help"):
        raise UserError(f"unknown direction '{argv[0]}': use to-hf or to-nanogpt, e.g. "
                        "python -m hfgpt.convert to-hf ckpt.pt out-folder")
    print(f"usage: hfgpt convert to-hf|to-nanogpt ...   (hfgpt convert to-hf --help)\n"
          f"   or: python -m hfgpt.convert to-hf|to-nanogpt ...\n\n{SUMMARY}\n")
    for name, run in DIRECTIONS.items():
        print(f"  {name:<11} {run.spec.summary}")
    return 0 if argv else 2


if __name__ == "__main__":
    sys.exit(main())
