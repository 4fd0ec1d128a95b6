"""A model folder as one GGUF file, for llama.cpp and what runs on it (Ollama, LM Studio).

    summary = write_gguf(Path("out-shakespeare-char-cpu"), Path("model.gguf"), outtype="f32")

The weights go through the gguf package in llama.cpp's layout (hfgpt.gguf.families), the
tokenizer as llama.cpp's BPE vocabulary with the same ids (hfgpt.gguf.vocab), and the sampling
defaults of generation_config.json as GGUF's general.sampling keys, which llama.cpp's tools read.
A padded vocabulary (hfgpt's rows past the tokenizer's ids, which generation suppresses) is left
out, so llama.cpp never samples those ids either. The file is written under a temporary name and
renamed when complete.
"""

import os
from pathlib import Path

import gguf
import numpy as np
import torch

from hfgpt.core.errors import UserError
from hfgpt.core.files import fsync_dir, owner_tag
from hfgpt.data.tokenizer import model_tokenizer
from hfgpt.gguf.families import family_of
from hfgpt.gguf.vocab import PRE, gguf_vocab

FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16}


def _array(tensor: torch.Tensor, outtype: str):
    """(data, raw_dtype) for GGUFWriter.add_tensor: vectors (norms, biases) stay float32, as llama.cpp's
    converter keeps them; matrices in outtype (numpy has no bfloat16: gguf packs it)."""
    data = tensor.detach().to(torch.float32).contiguous().numpy()
    if data.ndim <= 1 or outtype == "f32":
        return data, None
    if outtype == "f16":
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16


def vocabulary_rows(model, vocab, folder) -> int:
    """How many embedding rows go into the file: the tokenizer's ids, when the rows past them are
    hfgpt's padding (suppressed in generation); all rows otherwise, the extra ids as unused tokens."""
    rows = model.get_input_embeddings().weight.shape[0]
    n = len(vocab.tokens)
    if rows < n:
        raise UserError(f"{folder}: the tokenizer has {n:,} ids but the model only {rows:,} embedding rows: "
                        "the folder's tokenizer is not its model's")
    suppressed = set(getattr(model.generation_config, "suppress_tokens", None) or [])
    if rows > n and set(range(n, rows)) <= suppressed:
        return n
    vocab.pad_to(rows)
    return rows


def add_vocab(writer, vocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for kind, token_id in vocab.special.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(False)  # transformers' pipeline adds nothing before the prompt
    writer.add_add_eos_token(False)


def add_sampling(writer, generation_config) -> None:
    if generation_config is None or not generation_config.do_sample:
        return
    writer.add_sampling_temp(float(generation_config.temperature or 1.0))
    writer.add_sampling_top_k(int(generation_config.top_k or 0))
    if generation_config.top_p is not None and generation_config.top_p < 1:
        writer.add_sampling_top_p(float(generation_config.top_p))


def write_gguf(folder: Path, out: Path, outtype: str = "f32") -> dict:
    """Write `folder` (a model folder with its tokenizer) as the GGUF file `out`; returns what was
    written: architecture, vocabulary size, context, tensors, bytes."""
    from transformers import AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: give a model folder (the out_dir of a training run; a LoRA "
                        "checkpoint holds only its adapter, so export its run's out_dir)")
    tokenizer = model_tokenizer(str(folder))
    if tokenizer is None:
        raise UserError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json + merges.txt): a GGUF file carries "
                        "the tokenizer, so save it into the folder first")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    family = family_of(model.config, folder)
    vocab = gguf_vocab(tokenizer, folder)
    rows = vocabulary_rows(model, vocab, folder)
    tmp = out.parent / f".tmp-{owner_tag()}-{out.name}"  # a killed export's leftover is recognised as such
    writer = gguf.GGUFWriter(tmp, family.name)
    try:
        writer.add_name(folder.resolve().name)
        writer.add_file_type(FILE_TYPES[outtype])
        writer.add_vocab_size(rows)
        family.hparams(writer, model.config)
        add_vocab(writer, vocab)
        add_sampling(writer, model.generation_config)
        count = add_tensors(writer, family, model, rows, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return {"architecture": family.name, "vocab_size": rows, "context": family.context(model.config),
            "tensors": count, "bytes": out.stat().st_size}


def add_tensors(writer, family, model, rows: int, outtype: str) -> int:
    """Every weight, the embedding and output rows cut to `rows`; returns how many tensors."""
    count = 0
    for name, tensor in family.tensors(model.state_dict(), model.config):
        if name in ("token_embd.weight", "output.weight"):
            tensor = tensor[:rows]
        data, raw_dtype = _array(tensor, outtype)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
        count += 1
    return count
