"""A tokenizer as llama.cpp's BPE vocabulary ("gpt2"), giving the same ids for the same text.

    vocab = gguf_vocab(tokenizer, folder)    # tokens, types, merges, special ids; UserError if it cannot
    vocab.pad_to(n)                          # more rows in the model than ids: [PAD<i>] tokens for them

llama.cpp's BPE tokenizer splits the text with a pre-tokenizer regex, turns each piece's UTF-8
bytes into GPT-2's printable byte alphabet, merges pairs by rank and looks the result up. hfgpt's
tokenizers all fit it:
- byte-level BPE (GPT-2's, a learned `bpe`, `byte`): tokens and merges as they are, GPT-2's
  pre-tokenizer regex (`byte` has no merges, so any split gives its one id per byte);
- char: each character is its bytes in the byte alphabet, and a multi-byte character (é, —) is
  made whole by merges of its bytes, which never cross a character; no merge joins two characters.
A character the char tokenizer does not know is <unk> in transformers and left out by llama.cpp.
"""

import json
from dataclasses import dataclass, field

from transformers.convert_slow_tokenizer import bytes_to_unicode

from hfgpt.core.errors import UserError
from hfgpt.data.tokenizer import UNK, eot_id

NORMAL, UNKNOWN, CONTROL, UNUSED = 1, 2, 3, 5  # llama.cpp's token types (gguf.TokenType)
BYTE_CHAR = bytes_to_unicode()  # byte -> its printable character, GPT-2's byte alphabet
PRE = "gpt-2"  # llama.cpp's name for GPT-2's pre-tokenizer regex
# llama.cpp refuses a BPE vocabulary without merges, and gguf cannot write an empty list: a
# tokenizer without merges (byte, an ASCII char set) gets this one, which never applies, since
# without other merges every symbol is one character and '<none>' is six.
NO_MERGES = ["<none> <none>"]


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad -> id

    def pad_to(self, n: int) -> None:
        for i in range(len(self.tokens), n):
            self.tokens.append(f"[PAD{i}]")
            self.types.append(UNUSED)


def byte_level(text: str) -> str:
    return "".join(BYTE_CHAR[b] for b in text.encode("utf-8"))


def char_merges(chars) -> list[str]:
    """Merges that build each multi-byte character from its bytes, left to right: é (C3 A9) is
    'Ã ©'; a 3-byte character takes two merges, the second joining the first's result."""
    merges = {}
    for c in chars:
        pieces = [BYTE_CHAR[b] for b in c.encode("utf-8")]
        for i in range(1, len(pieces)):
            merges.setdefault(f"{''.join(pieces[:i])} {pieces[i]}", None)
    return list(merges)


def _refuse(folder, what: str) -> UserError:
    return UserError(f"{folder}: its tokenizer is {what}, which hfgpt export gguf cannot write as llama.cpp's "
                     "BPE vocabulary (it writes hfgpt's char, byte and BPE tokenizers and byte-level BPEs like "
                     "GPT-2's): convert this folder with llama.cpp's convert_hf_to_gguf.py")


def _pre_tokenizers(spec: dict | None) -> list[dict]:
    if spec is None:
        return []
    return spec["pretokenizers"] if spec.get("type") == "Sequence" else [spec]


def gguf_vocab(tokenizer, folder) -> Vocab:
    """The tokenizer's ids as llama.cpp's BPE vocabulary; UserError for a tokenizer it cannot match."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = spec["model"], _pre_tokenizers(spec.get("pre_tokenizer"))
    if spec.get("normalizer") is not None:
        raise _refuse(folder, f"normalized first ({spec['normalizer'].get('type')})")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    vocab = {text: i for text, i in model["vocab"].items() if i not in added}
    if model["type"] == "WordLevel":
        if any(len(text) != 1 for text in vocab) or [p.get("type") for p in pre] != ["Split"]:
            raise _refuse(folder, "a word-level tokenizer")
        merges = char_merges(vocab)
        vocab = {byte_level(text): i for text, i in vocab.items()}
    elif model["type"] == "BPE" and [p.get("type") for p in pre] == ["ByteLevel"] \
            and not pre[0].get("add_prefix_space") and (spec.get("decoder") or {}).get("type") == "ByteLevel":
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        if merges and not pre[0].get("use_regex", True):
            raise _refuse(folder, "a BPE that merges across words (ByteLevel without its regex)")
    else:
        raise _refuse(folder, f"a {model['type']} tokenizer")
    by_id = {i: text for text, i in vocab.items()} | {i: t["content"] for i, t in added.items()}
    n = max(by_id) + 1
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
    types = [UNUSED if i not in by_id else CONTROL if i in added else NORMAL for i in range(n)]
    eot = eot_id(tokenizer)
    special = {} if eot is None else {"bos": eot, "eos": eot, "pad": eot}
    unk = tokenizer.convert_tokens_to_ids(UNK) if UNK in tokenizer.get_vocab() else None
    if unk is not None and unk != eot:
        special["unk"] = unk
        types[unk] = UNKNOWN
    return Vocab(tokens, types, merges or NO_MERGES, special)
