"""Tokenizers: char-level built from the corpus, bytes, a byte-level BPE learned from the corpus,
GPT-2's BPE, or any Hugging Face tokenizer.

    char_tokenizer(set(text))                  # one id per character, nanoGPT's order
    byte_tokenizer()                           # ids 0..255 are the UTF-8 bytes, 256 is <|endoftext|>
    train_bpe(texts, vocab_size=4096)          # byte-level BPE (GPT-2's scheme) learned from texts
    load_tokenizer("gpt2")                     # a Hub id or a local folder
    save_tokenizer(tok, folder, block_size=256)   # every tokenizer folder hfgpt writes
    vocabulary_mismatch(data_tok, "char", model_tok, "gpt2-medium", "shakespeare")   # None or the error
    before, after = document_separators(tok, documents=True)   # [<s>], [</s>] for Llama's; [], [eot] for GPT-2's

Whatever the kind, the result is a `PreTrainedTokenizerFast` that is saved next to the token
files and into every model folder, so `pipeline("text-generation", model=out_dir)` works with
plain transformers (4.x and 5.x alike: see save_tokenizer). char, byte and bpe add
<|endoftext|>, the id that separates documents.
"""

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from hfgpt.core.errors import UserError, first_line
from hfgpt.core.files import atomic_write
from hfgpt.core.names import hub_repo, split_revision

EOT = "<|endoftext|>"
# The tokenizers hfgpt makes or knows by name: none adds tokens around a text (see added_around).
HFGPT_TOKENIZERS = ("char", "byte", "bpe", "gpt2")
UNK = "<unk>"
# transformers 5 saves every fast tokenizer as `TokenizersBackend` (its PreTrainedTokenizerFast is an
# alias of it), a class transformers 4.x does not have ("Tokenizer class TokenizersBackend does not
# exist"). PreTrainedTokenizerFast loads tokenizer.json in both; 5.x maps it back to its backend.
V5_ONLY_CLASSES = ("TokenizersBackend", "PythonBackend", "SentencePieceBackend", "MistralCommonBackend")
PORTABLE_CLASS = "PreTrainedTokenizerFast"
MODEL_INPUTS = ("input_ids", "attention_mask")
# Keys from_pretrained puts into a tokenizer's init_kwargs (where it was loaded from, and how) that
# save_pretrained writes back: they describe one machine's load, not the tokenizer. `backend` is
# 5.x's own tag, set again when absent.
LOADING_KEYS = ("is_local", "local_files_only", "backend", "name_or_path", "revision", "subfolder", "token",
                "cache_dir", "force_download", "proxies", "trust_remote_code", "use_fast", "user_agent",
                "tokenizer_file", "vocab_file", "merges_file", "special_tokens_map_file", "files_loaded", "device_map")


def _wrap(tok: Tokenizer, **special) -> PreTrainedTokenizerFast:
    # clean_up_tokenization_spaces would turn " ." into "." when decoding: keep the text exact.
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **special)


def char_tokenizer(chars: Iterable[str]) -> PreTrainedTokenizerFast:
    """One id per character in sorted order (nanoGPT's stoi), then <|endoftext|> and <unk>.

    The corpus's characters keep nanoGPT's ids 0..n-1, so token files match its train.bin;
    <|endoftext|> separates documents and ends generation, <unk> stands for unseen characters.
    """
    return char_tokenizer_from_stoi({c: i for i, c in enumerate(sorted(set(chars)))})


def char_tokenizer_from_stoi(stoi: dict[str, int]) -> PreTrainedTokenizerFast:
    """A char tokenizer with exactly these character ids, plus <|endoftext|> and <unk> after them."""
    vocab = dict(stoi)
    vocab[EOT] = max(vocab.values(), default=-1) + 1
    vocab[UNK] = vocab[EOT] + 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # [\s\S] matches every character, newlines included ("." would drop them).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(EOT, special=True), AddedToken(UNK, special=True)])
    return _wrap(tok, eos_token=EOT, unk_token=UNK)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Ids 0..255 are the bytes of the UTF-8 text, 256 is <|endoftext|>: any language, no unknowns.

    Built as a byte-level BPE without merges: the ByteLevel alphabet maps each byte to one
    printable character, and the vocabulary gives that character the byte's value as its id.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    vocab = {c: byte_of[c] for c in alphabet}
    vocab[EOT] = 256
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT, special=True)])
    return _wrap(tok, eos_token=EOT, bos_token=EOT, unk_token=EOT)


def train_bpe(texts: Iterator[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's pre-tokenizer and decoder, so any text round-trips exactly)
    learned from `texts`, with <|endoftext|> as id 0."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    learned = tok.get_vocab_size()
    if learned != vocab_size:
        raise UserError(f"tokenizer=bpe learned {learned:,} ids from the training text, not vocab_size={vocab_size:,}: "
                        f"lower vocab_size to {learned:,} or add text")
    return _wrap(tok, eos_token=EOT, bos_token=EOT, unk_token=EOT)


def bpe_from_vocab_merges(folder: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2's scheme) from vocab.json + merges.txt.

    transformers cannot convert these files to a fast tokenizer without tiktoken or
    sentencepiece, so build the same tokenizer with the `tokenizers` library.
    """
    tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    special = {}
    if EOT in vocab:
        tok.add_special_tokens([AddedToken(EOT, special=True)])
        special = {"eos_token": EOT, "bos_token": EOT, "unk_token": EOT}
    return _wrap(tok, **special)


def load_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A tokenizer from a local folder or a Hub id ('gpt2' is GPT-2's BPE; user/name@revision for a
    branch, tag or commit)."""
    folder = Path(name)
    if folder.is_dir() and not (folder / "tokenizer.json").exists() and (folder / "vocab.json").exists() \
            and (folder / "merges.txt").exists():
        return bpe_from_vocab_merges(folder)
    from transformers import AutoTokenizer  # imports torch (~3 s): only when a tokenizer is loaded by name

    if folder.is_dir():
        try:
            tok = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as e:
            raise UserError(f"tokenizer folder {name} could not be loaded ({first_line(e)}): it needs tokenizer.json, "
                            "or vocab.json + merges.txt") from None
    else:
        repo, revision = split_revision(name)
        repo = hub_repo(repo)
        try:
            tok = AutoTokenizer.from_pretrained(repo, **({"revision": revision} if revision else {}))
        except (OSError, ValueError) as e:
            raise UserError(
                f"tokenizer '{name}' is not a local folder and could not be loaded from the Hugging Face Hub or its "
                f"cache ({first_line(e)}): with network access run `hf download {repo}`, or set tokenizer to "
                "'char' or a local tokenizer folder") from None
    if not tok.is_fast:
        raise UserError(f"tokenizer '{name}' has no fast (Rust) version: hfgpt needs one to tokenize at speed")
    return tok


def model_tokenizer(model: str) -> PreTrainedTokenizerFast | None:
    """The tokenizer a model (a folder or a Hub id) comes with, or None when it has none (a folder of
    weights only, or a Hub repo whose tokenizer is not reachable)."""
    folder = Path(model)
    if folder.is_dir() and not (folder / "tokenizer.json").exists() and not (folder / "vocab.json").exists():
        return None
    try:
        return load_tokenizer(model)
    except UserError:
        return None


def vocabulary_mismatch(data_tok, data_name: str, model_tok, model_name: str, dataset: str) -> str | None:
    """The error when a dataset's tokenizer is not its model's (the same id would mean another
    string), else None. Compared on get_vocab() (token -> id, added tokens included): what makes
    token files interchangeable, so GPT-2's BPE data fits every gpt2* model."""
    if data_tok.get_vocab() == model_tok.get_vocab():
        return None
    return (f"{dataset} was prepared with the {data_name} tokenizer ({len(data_tok):,} ids) but {model_name} has its "
            f"own tokenizer ({len(model_tok):,} ids): delete `tokenizer: {data_name}` from the recipe (the model's "
            f"tokenizer is then used and the data prepared again) or set tokenizer: {model_name}")


def portable_config(config: dict, block_size: int | None = None) -> dict:
    """tokenizer_config.json's content as transformers 4.x and 5.x both read it: a class both have,
    no loading-time keys (nor private `_...` ones), the model's inputs named (no token_type_ids),
    model_max_length = block_size when given."""
    out = {k: v for k, v in config.items() if k not in LOADING_KEYS and not k.startswith("_")}
    if out.get("tokenizer_class") in V5_ONLY_CLASSES or "tokenizer_class" not in out:
        out["tokenizer_class"] = PORTABLE_CLASS
    if block_size is not None:
        out["model_max_length"] = block_size
    # A causal LM takes ids and a mask. Without this key 4.x's PreTrainedTokenizerFast returns
    # token_type_ids too, which generate(**tok(text, return_tensors="pt")) passes on and GPT-2 adds
    # as embeddings: other logits, silently (5.x and pipeline() leave them out).
    out["model_input_names"] = list(MODEL_INPUTS)
    return out


def save_tokenizer(tok: PreTrainedTokenizerFast, folder: str | Path, block_size: int | None = None) -> None:
    """save_pretrained, with tokenizer_config.json rewritten by portable_config: the one way hfgpt
    writes a tokenizer (dataset folders, out_dir, checkpoints, converted models). With block_size
    (a model folder) the tokenizer's model_max_length is the model's context, on the object too."""
    folder = Path(folder)
    if block_size is not None:
        tok.model_max_length = block_size
    tok.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = portable_config(json.loads(path.read_text(encoding="utf-8")), block_size)
    atomic_write(path, json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


PROBE = "hello"  # any text: a post-processor's additions do not depend on it


def added_around(tok: PreTrainedTokenizerFast) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after every text it encodes with its special tokens
    (its post-processor): Llama's, Mistral's, Gemma's BOS, OPT's </s>; none for GPT-2, Qwen,
    GPT-NeoX and hfgpt's char, byte and bpe tokenizers."""
    backend = tok.backend_tokenizer
    plain = backend.encode(PROBE, add_special_tokens=False).ids
    full = backend.encode(PROBE, add_special_tokens=True).ids
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i], full[i + len(plain):]
    return full, []


def document_separators(tok: PreTrainedTokenizerFast, documents: bool) -> tuple[list[int], list[int]]:
    """The ids around each document in the token files: what the tokenizer itself adds (its BOS:
    a document reads as the model read its training text), and when the text is many documents its
    EOS after each (eot_id), so that no document runs into the next. One text stream (a single
    file, as nanoGPT's) gets only what the tokenizer adds."""
    before, after = added_around(tok)
    eot = eot_id(tok)
    if documents and eot is not None and after[-1:] != [eot]:
        after = after + [eot]
    return before, after


def eot_id(tok: PreTrainedTokenizerFast) -> int | None:
    """The id that separates documents and ends generation: <|endoftext|> or the tokenizer's eos."""
    ids = tok.convert_tokens_to_ids([EOT])
    if ids and ids[0] is not None and ids[0] != tok.unk_token_id:
        return ids[0]
    return tok.eos_token_id
