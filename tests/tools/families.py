"""Tiny random causal LMs of the families people fine-tune, saved as Hub folders are: config.json,
model.safetensors, generation_config.json and each family's kind of tokenizer (a byte-level BPE
learned from a little Shakespeare, with the family's special tokens and its habit of adding a
BOS or not). Nothing is downloaded.

    folder = make_model_folder("llama", tmp_path / "tiny-llama", text)   # 2 layers x 64, GQA 4/2
    FAMILIES                                                             # the names make_model_folder knows
"""

import json
from pathlib import Path

# family -> (config class name, config kwargs, tokenizer: (bos, eos, adds_bos, extra special tokens))
_SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
          "max_position_embeddings": 256}
FAMILY_SPECS = {
    "llama": ("LlamaConfig", {**_SMALL, "num_key_value_heads": 2}, ("<s>", "</s>", True)),
    "qwen2": ("Qwen2Config", {**_SMALL, "num_key_value_heads": 2, "tie_word_embeddings": True}, (None, "<|endoftext|>", False)),
    "qwen3": ("Qwen3Config", {**_SMALL, "num_key_value_heads": 2, "head_dim": 32}, (None, "<|endoftext|>", False)),
    "mistral": ("MistralConfig", {**_SMALL, "num_key_value_heads": 2, "sliding_window": 4096}, ("<s>", "</s>", True)),
    "gpt_neox": ("GPTNeoXConfig", {**_SMALL, "rotary_pct": 0.25}, ("<|endoftext|>", "<|endoftext|>", False)),
    "gemma": ("GemmaConfig", {**_SMALL, "num_key_value_heads": 1, "head_dim": 16}, ("<bos>", "<eos>", True)),
    "phi3": ("Phi3Config", {**_SMALL, "num_key_value_heads": 2}, ("<s>", "<|endoftext|>", False)),
    "opt": ("OPTConfig", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
                          "word_embed_proj_dim": 64, "max_position_embeddings": 256}, ("</s>", "</s>", True)),
    "gemma3": ("Gemma3TextConfig", {**_SMALL, "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 16,
                                    "layer_types": ["sliding_attention", "full_attention"]}, ("<bos>", "<eos>", True)),
    "smollm3": ("SmolLM3Config", {**_SMALL, "num_key_value_heads": 2}, (None, "<|endoftext|>", False)),
    "olmo2": ("Olmo2Config", {**_SMALL, "num_key_value_heads": 2}, (None, "<|endoftext|>", False)),
    "mixtral": ("MixtralConfig", {**_SMALL, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2},
                ("<s>", "</s>", True)),
    "falcon": ("FalconConfig", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                "new_decoder_architecture": True, "num_kv_heads": 2, "max_position_embeddings": 256},
               (None, "<|endoftext|>", False)),
    "bloom": ("BloomConfig", {"hidden_size": 64, "n_layer": 2, "n_head": 4}, ("<s>", "</s>", False)),
    "gpt_neo": ("GPTNeoConfig", {"hidden_size": 64, "num_layers": 2, "num_heads": 4,
                                 "attention_types": [[["global", "local"], 1]], "window_size": 16,
                                 "max_position_embeddings": 256}, ("<|endoftext|>", "<|endoftext|>", False)),
    "mamba": ("MambaConfig", {"hidden_size": 64, "num_hidden_layers": 2, "state_size": 8}, (None, "<|endoftext|>", False)),
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256},
             ("<|endoftext|>", "<|endoftext|>", False)),
}
FAMILIES = tuple(FAMILY_SPECS)


def make_tokenizer(text: str, bos: str | None, eos: str, adds_bos: bool, vocab_size: int = 320):
    """A byte-level BPE learned from `text` with the family's special tokens; a post-processor adds
    the BOS to every encoded text when the family's tokenizer does (Llama, Mistral, Gemma, OPT)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = [t for t in dict.fromkeys([bos, eos, "<unk>" if bos == "<s>" else None]) if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                   unk_token="<unk>" if "<unk>" in special else None)


def make_model_folder(family: str, folder: Path, text: str, seed: int = 0, **config) -> Path:
    """A random model of `family` with its tokenizer, saved in `folder` (float32 unless
    config says otherwise, e.g. dtype="bfloat16" as many Hub checkpoints are stored)."""
    import torch
    import transformers

    class_name, kwargs, (bos, eos, adds_bos) = FAMILY_SPECS[family]
    tok = make_tokenizer(text, bos, eos, adds_bos)
    ids = {"bos_token_id": tok.convert_tokens_to_ids(bos) if bos else None, "eos_token_id": tok.eos_token_id}
    if family in ("opt", "phi3", "smollm3"):  # their configs default to a pad id of their real vocabulary
        ids["pad_token_id"] = tok.eos_token_id
    dtype = config.pop("dtype", None)
    cfg = getattr(transformers, class_name)(vocab_size=len(tok), **ids, **{**kwargs, **config})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # pretrained models have non-zero biases (zero at init in most families)
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.02)
    if dtype:
        model = model.to(getattr(torch, dtype))
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def config_of(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())
