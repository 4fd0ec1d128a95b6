"""GGUF export: hfgpt's model folders run in llama.cpp's runtime (llama-cpp-python) with the same ids.

Tiny models are trained here with hfgpt (char, byte and bpe from scratch, and a GPT-2 fine-tune with
GPT-2's BPE), or built as LlamaForCausalLM with hfgpt's tokenizers; each is exported, loaded by
llama.cpp, and must tokenize text as transformers does, give the same logits, and generate the same
first tokens as transformers' pipeline, greedily.
"""

import json

import numpy as np
import pytest
import torch
import yaml

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extras: pip install -e '.[test]'")
gguf = pytest.importorskip("gguf", reason="gguf is in the test extras: pip install -e '.[test]'")

from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, pipeline  # noqa: E402

from hfgpt import export, train  # noqa: E402
from hfgpt.data.tokenizer import byte_tokenizer, char_tokenizer, eot_id, save_tokenizer, train_bpe  # noqa: E402
from hfgpt.model.gpt import lm_loss, set_generation_defaults  # noqa: E402
from tests.conftest import TINY  # noqa: E402
from tests.helpers import error_lines  # noqa: E402

# Characters of 2, 3 and 4 UTF-8 bytes, so that the char tokenizer's merges are exercised.
UNICODE = "\ncafé — naïve “quoted” 日本語 ✓ 😀\n"
PROMPT = "ROMEO: what say you, café — 日本?"
# text the tokenizers must split as transformers does (GPT-2's pre-tokenizer: contractions, numbers, runs of spaces)
TEXTS = [PROMPT, "I'll say it's 1,234 \t\n  times  over\n\n", "x<|endoftext|>y", " leading and trailing  ", "a" * 300]
NEW_TOKENS = 24


def text_for(shakespeare_text: str) -> str:
    return shakespeare_text[:60_000] + UNICODE


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare_text, gpt2_medium_dir):
    """kind -> the out_dir of a tiny hfgpt run (trained lazily, once per module)."""
    work = tmp_path_factory.mktemp("export")
    source = work / "text.txt"
    source.write_text(text_for(shakespeare_text), encoding="utf-8")
    kinds = {"char": {"tokenizer": "char"}, "byte": {"tokenizer": "byte"},
             "bpe": {"tokenizer": "bpe", "vocab_size": 1100},  # padded to 1152 rows: the padding is left out
             # GPT-2's BPE: a fine-tune of conftest's gpt2-medium stand-in (GPT-2's tokenizer, config keys with
             # n_ctx 1024, gelu_new, biases); 50k logits a position make each step ~0.3 s
             "gpt2": {"init_from": str(gpt2_medium_dir), "tokenizer": None, "max_iters": 6, "batch_size": 4,
                      "eval_iters": 1, "learning_rate": 1e-2, "lr_decay_iters": 6}}
    done = {}

    def get(kind: str):
        if kind not in done:
            recipe = {**TINY, "source": str(source), "dataset": kind, "data_dir": str(work / "data"),
                      "out_dir": str(work / kind), "max_iters": 60, "eval_interval": 1000, "log_interval": 1000,
                      "lr_decay_iters": 60, "block_size": 64, "eval_samples": 0, **kinds[kind]}
            path = work / f"{kind}.yaml"
            path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if v is not None}))
            assert train.main([str(path)]) == 0
            done[kind] = work / kind
        return done[kind]

    return get


def run_in_llama_cpp(path, prompt_ids: list[int], new_tokens: int):
    """llama.cpp on the GGUF file: logits at every prompt position, and greedy tokens after the prompt."""
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    try:
        llm.eval(prompt_ids)
        logits = np.array(llm.scores[:len(prompt_ids)])
        llm.reset()
        ids = []
        for token in llm.generate(prompt_ids, temp=0.0):  # temp 0: llama.cpp's greedy sampler
            if token == llm.token_eos() or len(ids) == new_tokens:
                break
            ids.append(token)
        return llm, logits, ids
    except BaseException:
        llm.close()
        raise


def known(tok, texts: list[str]) -> list[str]:
    """The texts without characters the tokenizer does not know: transformers makes those <unk>, llama.cpp
    leaves them out (char tokenizers only; byte-level ones know every byte)."""
    unknown = tok.unk_token_id if tok.unk_token != tok.eos_token else None
    return [t for t in texts if unknown is None or unknown not in tok(t)["input_ids"]]


def assert_same_in_llama_cpp(folder, gguf_file, prompt=PROMPT):
    tok = AutoTokenizer.from_pretrained(folder)
    texts = known(tok, TEXTS)
    assert prompt in texts
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt_ids = tok(prompt)["input_ids"]
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    expected = pipe(prompt, do_sample=False, max_new_tokens=NEW_TOKENS, return_full_text=False)[0]["generated_text"]
    with torch.no_grad():
        hf_logits = model(torch.tensor([prompt_ids])).logits[0].numpy()
        hf_ids = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=NEW_TOKENS)[0, len(prompt_ids):]
    hf_ids = [i for i in hf_ids.tolist() if i != eot_id(tok)]
    llm, logits, ids = run_in_llama_cpp(gguf_file, prompt_ids, NEW_TOKENS)
    try:
        for text in texts:  # the same ids for the same text (special tokens in the text parsed, as transformers does)
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"], text
        assert llm.detokenize(prompt_ids).decode() == prompt
        vocab = len(logits[0])
        # the padded rows left out; logits measured up to 1.7e-3 apart (llama.cpp's GELU is tanh's in half
        # precision, its KV cache f16); a wrong layout (untransposed Conv1D, unpermuted RoPE rows) is off by whole units
        assert vocab == len(tok) and np.abs(logits - hf_logits[:, :vocab]).max() < 1e-2
        assert ids == hf_ids and len(ids) > 0, (ids, hf_ids)
        assert llm.detokenize(ids).decode() == expected  # what the pipeline printed, token for token
    finally:
        llm.close()


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "gpt2"])
def test_trained_folders_sample_in_llama_cpp_as_in_transformers(kind, trained, tmp_path, capsys):
    folder = trained(kind)
    out = tmp_path / f"{kind}.gguf"
    assert export.main(["gguf", str(folder), f"--out={out}"]) == 0
    assert f"wrote {out}: llama.cpp's gpt2" in capsys.readouterr().out
    config = json.loads((folder / "config.json").read_text())
    assert config["n_ctx"] == config["n_positions"] == 64  # llama.cpp's converter reads n_ctx (gpt2-medium's: 1024)
    reader = gguf.GGUFReader(out)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.t")}
    assert fields["gpt2.context_length"] == config["n_positions"]
    assert (fields["general.sampling.temp"], fields["general.sampling.top_k"]) == (pytest.approx(0.8), 200)
    assert_same_in_llama_cpp(folder, out)


@pytest.mark.e2e
def test_default_file_is_in_the_folder_and_f16_is_half_the_size(trained, capsys):
    folder = trained("char")
    assert export.main(["gguf", str(folder)]) == 0
    f32 = folder / f"{folder.name}-f32.gguf"
    assert export.main(["gguf", str(folder), "--outtype=f16"]) == 0
    f16 = folder / f"{folder.name}-f16.gguf"
    assert 0.45 < f16.stat().st_size / f32.stat().st_size < 0.6
    prompt_ids = AutoTokenizer.from_pretrained(folder)(PROMPT)["input_ids"]
    _, logits32, _ = closed(run_in_llama_cpp(f32, prompt_ids, 4))
    _, logits16, _ = closed(run_in_llama_cpp(f16, prompt_ids, 4))
    assert np.abs(logits32 - logits16).max() < 0.05  # f16 weights: close, not equal
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def closed(result):
    result[0].close()
    return result


def tiny_llama(tok, text: str, tie: bool, seed: int = 0) -> LlamaForCausalLM:
    """A LlamaForCausalLM as the lead's `architecture: llama` builds it (nanoGPT's shapes), trained 40 steps
    so that its next-token distributions are peaked (an untrained model's near-ties would make any greedy
    comparison a coin toss)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie, bos_token_id=eot_id(tok), eos_token_id=eot_id(tok))
    model = LlamaForCausalLM(config)
    ids = torch.tensor(tok(text[:20_000])["input_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        starts = torch.randint(len(ids) - 33, (8,))
        x = torch.stack([ids[s:s + 32] for s in starts])
        y = torch.stack([ids[s + 1:s + 33] for s in starts])
        loss = lm_loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    set_generation_defaults(model, 64, eot_id(tok))
    return model


@pytest.mark.e2e
@pytest.mark.parametrize("kind, tie", [("char", False), ("byte", True), ("bpe", False)])
def test_llama_folders_sample_in_llama_cpp_as_in_transformers(kind, tie, tmp_path, shakespeare_text):
    text = text_for(shakespeare_text)
    tok = {"char": lambda: char_tokenizer(text), "byte": byte_tokenizer, "bpe": lambda: train_bpe(iter([text]), 700)}[kind]()
    folder = tmp_path / "llama"
    tiny_llama(tok, text, tie).save_pretrained(folder)
    save_tokenizer(tok, folder, 64)
    out = tmp_path / "llama.gguf"
    assert export.main(["gguf", str(folder), f"--out={out}"]) == 0
    fields = {name: field.contents() for name, field in gguf.GGUFReader(out).fields.items()}
    assert fields["general.architecture"] == "llama" and fields["llama.attention.head_count_kv"] == 2
    assert_same_in_llama_cpp(folder, out)


def write_folder(folder, model, tok):
    model.save_pretrained(folder)
    save_tokenizer(tok, folder, 64)
    return folder


@pytest.mark.parametrize("case, message", [
    ("opt", "model_type opt: hfgpt export gguf writes GPT-2 (gpt2) and Llama (llama) models"),
    ("relu", "activation_function=relu in config.json: llama.cpp's gpt2 architecture does not compute that"),
    ("wordpiece", "its tokenizer is a WordPiece tokenizer"),
    ("no-tokenizer", "has no tokenizer"),
    ("adapter-only", "has no config.json"),
])
def test_what_llama_cpp_cannot_run_the_same_is_refused_in_one_line(case, message, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

    tok = char_tokenizer("abc")
    folder = tmp_path / case
    if case == "opt":
        write_folder(folder, OPTForCausalLM(OPTConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                                      ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16)), tok)
    elif case in ("relu", "wordpiece", "no-tokenizer"):
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=8, n_embd=16, n_layer=1, n_head=2,
                                           activation_function="relu" if case == "relu" else "gelu"))
        if case == "wordpiece":
            wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "b": 2, "c": 3, "d": 4}, unk_token="[UNK]"))
            wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
            tok = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]")
        write_folder(folder, model, tok)
        if case == "no-tokenizer":
            for name in ("tokenizer.json", "tokenizer_config.json"):
                (folder / name).unlink()
    else:  # a LoRA checkpoint: the adapter and recipe.yaml, no model
        (folder / "adapter").mkdir(parents=True)
        (folder / "recipe.yaml").write_text("lora_r: 8\n")
    assert export.main(["gguf", str(folder), f"--out={tmp_path / 'x.gguf'}"]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and message in errors[0], errors
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".tmp-*"))  # nothing half-written
