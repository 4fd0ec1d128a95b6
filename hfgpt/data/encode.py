"""Encoders: texts -> numpy token ids, exactly the ids of the tokenizer that prepare saves; and
write_tokens, which runs one over a whole source with threads and writes the ids in order.

    encode = encoder_for(tokenizer)           # a PreTrainedTokenizerFast
    encode(["a document", "another"])         # -> [np.ndarray, np.ndarray] of uint32 ids
    write_tokens(source, encode, {"train": ShardWriter(...), "val": ShardWriter(...)}, is_val, [bos], [eos], num_proc)

Text is encoded as ordinary text: a literal "<|endoftext|>" in a document is not the separator
(as tiktoken's encode_ordinary in nanoGPT's prepare scripts). Every encoder releases the GIL
while it works, so prepare runs several in threads. Which one runs, by tokenizer:
  - GPT-2's vocabulary and merges: tiktoken (an install requirement). The tokenizers library's
    ByteLevel BPE gives the same ids about 5x slower per core here (0.4-0.55M vs 2.0-2.7M
    tokens/s on tiny Shakespeare, tokenizers 0.23 / tiktoken 0.14): perf shows malloc/free and
    memmove of the per-word NormalizedString and Token objects (~35%) and Oniguruma's regex
    (~10%), which no setting changes (encode_batch_fast, a larger BPE cache, or the regex as a
    separate Split pre-tokenizer measured the same). HFGPT_TIKTOKEN=0 turns tiktoken off.
  - hfgpt's char tokenizer: a lookup table over code points; byte tokenizer: the UTF-8 bytes.
  - anything else: tokenizers' encode_batch_fast.
"""

import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from hfgpt.core.device import usable_cpus
from hfgpt.data.shards import ShardWriter
from hfgpt.data.sources import Source
from hfgpt.data.tokenizer import EOT

Encoder = Callable[[list[str]], list[np.ndarray]]
BATCH_CHARS = 1 << 20  # text per encoder call
# GPT-2's pre-tokenizer regex (tiktoken's r50k_base / gpt2 pat_str).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# sha256 of GPT-2's vocabulary and merges as _fingerprint writes them (vocab.json/encoder.json and
# merges.txt/vocab.bpe of openai-community/gpt2); a tokenizer with this fingerprint is GPT-2's.
GPT2_FINGERPRINT = "6b81dbd64442b650b767e6e6aa14045b56f3503a1341ba574de0ad9977262983"


def encoder_for(tok: PreTrainedTokenizerFast) -> Encoder:
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec["model"]
    if model["type"] == "WordLevel" and _is_char_splitter(spec.get("pre_tokenizer")):
        return char_encoder(model["vocab"], model["vocab"][model["unk_token"]])
    if model["type"] == "BPE" and not model["merges"] and _byte_vocab(model["vocab"]):
        return byte_encoder
    if os.environ.get("HFGPT_TIKTOKEN", "1") != "0" and model["type"] == "BPE" and _is_gpt2(spec):
        try:
            return tiktoken_encoder(model["vocab"])
        except ImportError:
            pass
    return tokenizers_encoder(tok)


def _is_char_splitter(pre) -> bool:
    return bool(pre) and pre.get("type") == "Split" and pre.get("pattern") == {"Regex": r"[\s\S]"}


def _byte_vocab(vocab: dict) -> bool:
    return {k: v for k, v in vocab.items() if k != EOT} == {c: b for b, c in bytes_to_unicode().items()}


def char_encoder(vocab: dict[str, int], unk_id: int) -> Encoder:
    """Code point -> id through a sorted table: exact for hfgpt's char tokenizer, ~100x its speed."""
    chars = sorted((ord(c), i) for c, i in vocab.items() if len(c) == 1)
    points = np.array([c for c, _ in chars], dtype=np.uint32)
    ids = np.array([i for _, i in chars], dtype=np.uint32)

    def encode(texts: list[str]) -> list[np.ndarray]:
        out = []
        for text in texts:
            cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            at = np.minimum(np.searchsorted(points, cp), len(points) - 1)
            out.append(np.where(points[at] == cp, ids[at], np.uint32(unk_id)))
        return out

    return encode


def byte_encoder(texts: list[str]) -> list[np.ndarray]:
    return [np.frombuffer(t.encode("utf-8", "surrogatepass"), dtype=np.uint8).astype(np.uint32) for t in texts]


def tokenizers_encoder(tok: PreTrainedTokenizerFast) -> Encoder:
    backend = type(tok.backend_tokenizer).from_str(tok.backend_tokenizer.to_str())  # a copy: the saved one stays as is
    backend.encode_special_tokens = True  # "<|endoftext|>" in the text is text, not the separator

    def encode(texts: list[str]) -> list[np.ndarray]:
        return [np.array(e.ids, dtype=np.uint32) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]

    return encode


def tiktoken_encoder(vocab: dict[str, int]) -> Encoder:
    """tiktoken's Encoding built from the tokenizer's own vocabulary (no download)."""
    import tiktoken

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(byte_of[c] for c in token): i for token, i in vocab.items() if token != EOT}
    enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: vocab[EOT]})
    core = enc._core_bpe  # encode_to_numpy without its special-token scan: encode_ordinary into a buffer

    def encode(texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(core.encode_to_tiktoken_buffer(t, set()), dtype=np.uint32) for t in texts]

    return encode


def _is_gpt2(spec: dict) -> bool:
    pre, model = spec.get("pre_tokenizer") or {}, spec["model"]
    plain = (spec.get("normalizer") is None and pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space")
             and pre.get("use_regex", True) and not model.get("dropout") and not model.get("byte_fallback")
             and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix")
             and not model.get("ignore_merges"))
    added = {t["content"] for t in spec.get("added_tokens", [])}
    return plain and added <= {EOT} and _fingerprint(model["vocab"], model["merges"]) == GPT2_FINGERPRINT


def _fingerprint(vocab: dict[str, int], merges: list) -> str:
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return hashlib.sha256(json.dumps([sorted(vocab.items(), key=lambda kv: kv[1]), merges]).encode()).hexdigest()


def _batches(source: Source, is_val, documents: dict) -> Iterator[tuple[str, list[str], list[bool], list[bool]]]:
    """(split, texts, starts, ends) of about BATCH_CHARS each, in source order; starts[i] / ends[i]
    mark a document's first / last piece. A batch is handed out only when the next piece arrives,
    so ends[-1] can still be set."""
    buffers = {"train": ([], [], [], [0]), "val": ([], [], [], [0])}
    for i, document in enumerate(source.documents()):
        split = "val" if is_val is not None and is_val(i) else "train"
        texts, starts, ends, size = buffers[split]
        first = True
        for piece in document:
            if size[0] >= BATCH_CHARS:
                yield split, texts[:], starts[:], ends[:]
                texts.clear(), starts.clear(), ends.clear()
                size[0] = 0
            texts.append(piece)
            starts.append(first)
            ends.append(False)
            size[0] += len(piece)
            first = False
        if not first:
            ends[-1] = True
            documents[split] += 1
    for split, (texts, starts, ends, _) in buffers.items():
        if texts:
            yield split, texts, starts, ends


def write_tokens(source: Source, encode, writers: dict[str, ShardWriter], is_val, start: list[int], end: list[int],
                 num_proc: int | None) -> dict[str, int]:
    """Tokenize every document with num_proc threads and write the ids in order, each document as
    start + its ids + end (the separators, hfgpt.data.tokenizer.document_separators); returns the
    number of documents per split. At most 2 batches per thread are in flight, so memory is bounded."""
    threads = num_proc or usable_cpus()
    documents = {"train": 0, "val": 0}
    dtype = writers["train"].dtype
    bar = tqdm(total=source.text_bytes(), unit="B", unit_scale=True, desc="tokenizing", disable=None)
    before, after = np.array(start, dtype=np.uint32), np.array(end, dtype=np.uint32)

    def encode_batch(texts: list[str], starts: list[bool], ends: list[bool]) -> np.ndarray:
        arrays = []
        for array, first, last in zip(encode(texts), starts, ends):
            arrays += ([before] if first and start else []) + [array] + ([after] if last and end else [])
        return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype)

    with ThreadPoolExecutor(threads) as pool:
        pending = deque()
        try:
            for split, texts, starts, ends in _batches(source, is_val, documents):
                pending.append((split, sum(map(len, texts)), pool.submit(encode_batch, texts, starts, ends)))
                while len(pending) > 2 * threads or (pending and pending[0][2].done()):
                    _write_next(pending, writers, bar)
            while pending:
                _write_next(pending, writers, bar)
        finally:
            for *_, future in pending:
                future.cancel()
            bar.close()
    return documents


def _write_next(pending: deque, writers: dict[str, ShardWriter], bar) -> None:
    split, chars, future = pending.popleft()
    writers[split].write(future.result())
    bar.update(chars)
