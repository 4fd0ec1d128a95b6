"""sample: the pipeline with its KV cache inside block_size, nanoGPT's sliding window past it."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hfgpt import sample
from hfgpt.training.loop import train as train_loop
from hfgpt.config import load_recipe
from hfgpt.model.generate import generate, load_pipeline, sample_sliding
from tests.conftest import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare_text):
    """A tiny char model (block_size 32) trained for 200 iterations."""
    d = tmp_path_factory.mktemp("trained")
    (d / "t.txt").write_text(shakespeare_text[:100_000], encoding="utf-8")
    values = {**TINY, "source": str(d / "t.txt"), "data_dir": str(d / "data"), "out_dir": str(d / "out"),
              "max_iters": 200, "lr_decay_iters": 200, "eval_interval": 200}
    train_loop(load_recipe(None, values))
    return d / "out"


@pytest.mark.e2e
def test_generates_past_block_size(trained):
    pipe = load_pipeline(str(trained), "cpu")
    assert pipe.model.config.n_positions == 32
    pipe.model.generation_config.eos_token_id = None  # never stop early: count the characters
    texts = generate(pipe, "ROMEO:", num_samples=3, max_new_tokens=100)
    assert len(texts) == 3
    for text in texts:
        assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 100
    assert len(set(texts)) == 3


def nanogpt_generate(model, idx, max_new_tokens, block_size, temperature=1.0, top_k=None):
    """nanoGPT's GPT.generate, verbatim but for the model call."""
    for _ in range(max_new_tokens):
        idx_cond = idx if idx.size(1) <= block_size else idx[:, -block_size:]
        logits = model(idx_cond).logits
        logits = logits[:, -1, :] / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("Inf")
        probs = torch.nn.functional.softmax(logits, dim=-1)
        idx_next = torch.multinomial(probs, num_samples=1)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def test_sliding_window_is_nanogpts():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=2, n_head=2)).eval()
    lengths = []
    model.register_forward_pre_hook(lambda m, args, kwargs: lengths.append(kwargs["input_ids"].size(1)), with_kwargs=True)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    torch.manual_seed(1)
    ours = sample_sliding(model, prompt, 20, block_size=8, temperature=0.8, top_k=10, eos=None)
    assert max(lengths) == 8 and lengths[0] == 3
    model._forward_pre_hooks.clear()
    torch.manual_seed(1)
    with torch.no_grad():
        reference = nanogpt_generate(model, prompt, 20, block_size=8, temperature=0.8, top_k=10)
    assert torch.equal(ours, reference)


def test_cli_prints_samples(trained, capsys):
    assert sample.main([str(trained), "--start=ROMEO:", "--num_samples=2", "--max_new_tokens=40", "--device=cpu"]) == 0
    out = capsys.readouterr().out
    samples = out.split("---------------\n")
    assert len(samples) == 3 and samples[-1] == ""
    assert all(s.startswith("ROMEO:") for s in samples[:2])


def test_prompt_from_file_and_same_seed_same_text(trained, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("JULIET:\n")
    args = [str(trained), f"--start=FILE:{tmp_path / 'p.txt'}", "--num_samples=1", "--max_new_tokens=30", "--seed=7"]
    assert sample.main(args) == 0
    first = capsys.readouterr().out
    assert sample.main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("JULIET:\n")


@pytest.mark.parametrize("args, message", [
    (["--start=ROMEO é"], "does not know: 'é'"),
    (["--start=FILE:/nonexistent/prompt.txt"], "prompt file /nonexistent/prompt.txt not found"),
    (["--max_new_tokens=0"], "--max_new_tokens=0"),
    (["--top_k=-5"], "--top_k=-5 must be at least 0"),
    (["--temperature=nan"], "--temperature=nan must be a finite number"),
])
def test_bad_arguments(trained, capsys, args, message):
    assert sample.main([str(trained), *args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def test_missing_model(capsys, tmp_path):
    assert sample.main([str(tmp_path / "no-such-run")]) == 2
    assert "could not be loaded" in capsys.readouterr().err


def test_padded_vocabulary_is_never_sampled(tmp_path, gpt2_dir):
    """A GPT-2-sized vocabulary is padded to a multiple of 64 in the model only; even with the
    padded ids made the likeliest, neither the pipeline nor the sliding window samples one."""
    from hfgpt.config import ModelConfig
    from hfgpt.model.gpt import build_model
    from hfgpt.data.tokenizer import load_tokenizer

    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8), vocab_size=50257, eot_token_id=50256)
    assert model.config.vocab_size == 50304 and model.generation_config.suppress_tokens == list(range(50257, 50304))
    with torch.no_grad():  # make the padded ids by far the likeliest (lm_head is tied to wte)
        model.transformer.ln_f.bias.fill_(5.0)
        model.transformer.wte.weight[50257:] = 10.0
        assert model(input_ids=torch.tensor([[15496]])).logits[0, -1].argmax() >= 50257
    model.generation_config.eos_token_id = None
    model.save_pretrained(tmp_path / "m")
    tok = load_tokenizer(str(gpt2_dir))
    tok.save_pretrained(tmp_path / "m")
    assert len(tok) == 50257  # the tokenizer is not padded
    pipe = load_pipeline(str(tmp_path / "m"), "cpu")
    texts = generate(pipe, "Hello", num_samples=2, max_new_tokens=20, temperature=1.0, top_k=None)
    ids = [tok(t)["input_ids"] for t in texts]
    assert all(len(i) >= 10 for i in ids) and max(max(i) for i in ids) < 50257
    raw = sample_sliding(pipe.model, torch.tensor([[15496] * 8]), 10, block_size=8, temperature=1.0, top_k=None, eos=None)
    assert raw.max() < 50257
