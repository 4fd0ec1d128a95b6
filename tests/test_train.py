"""train: the loss falls, out_dir is a plain transformers model, the schedule is nanoGPT's, errors are
one line. (Several processes and machines: test_multinode.py.)"""

import json
import subprocess
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig

from hfgpt import train
from hfgpt.training import run as training_run
from hfgpt.config import load_recipe
from hfgpt.core.errors import UserError
from hfgpt.model.families import count_parameters
from hfgpt.model.gpt import causal_lm, check_fits
from tests.conftest import PYTHON, TINY, run_env
from tests.helpers import error_lines, read_metrics


@pytest.mark.e2e
def test_short_run_loss_falls_and_writes_a_model_folder(tiny_recipe, workdir):
    assert train.main([str(tiny_recipe())]) == 0
    out = workdir / "out"
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "recipe.yaml", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".saving-*"))
    rows = read_metrics(out)
    evals = [r for r in rows if "val_loss" in r]
    logs = [r for r in rows if "loss" in r]
    assert [r["iter"] for r in evals] == [0, 50, 100]
    assert [r["iter"] for r in logs] == [25, 50, 75, 100]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0  # ~4.2 (uniform over 67) -> well below
    assert all(r["tokens_per_sec"] > 0 and r["lr"] > 0 for r in logs)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    vocab_size = json.loads((workdir / "data" / "tiny" / "meta.json").read_text())["vocab_size"]
    assert (config["n_layer"], config["n_embd"], config["n_positions"], config["vocab_size"]) == (2, 32, 32, vocab_size)


@pytest.mark.e2e
def test_out_dir_loads_with_plain_transformers(tiny_recipe, workdir):
    assert train.main([str(tiny_recipe())]) == 0
    script = textwrap.dedent(f"""
        import sys
        from transformers import pipeline, set_seed
        set_seed(0)
        pipe = pipeline("text-generation", model={str(workdir / "out")!r})
        text = pipe("ROMEO:", max_new_tokens=20, do_sample=False)[0]["generated_text"]
        assert not any(m.startswith("hfgpt") for m in sys.modules), "hfgpt was imported"
        print(repr(text))
    """)
    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=run_env(), cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    text = eval(result.stdout.strip().splitlines()[-1])
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 20


def test_bias_false_keeps_biases_at_zero(tiny_recipe, workdir):
    assert train.main([str(tiny_recipe(bias=False, max_iters=10, eval_interval=10))]) == 0
    weights = load_file(workdir / "out" / "model.safetensors")
    biases = {k: v for k, v in weights.items() if k.endswith(".bias")}
    assert biases and all(torch.count_nonzero(v) == 0 for v in biases.values())
    assert torch.count_nonzero(weights["transformer.h.0.attn.c_attn.weight"]) > 0


@pytest.mark.e2e
def test_only_better_val_loss_saves_without_always_save(tiny_recipe, workdir):
    assert train.main([str(tiny_recipe(always_save_checkpoint=False))]) == 0
    assert (workdir / "out" / "model.safetensors").exists()  # the first evaluation after 0 always improves


def test_eval_only_saves_nothing(tiny_recipe, workdir):
    assert train.main([str(tiny_recipe()), "--eval_only=True"]) == 0
    rows = read_metrics(workdir / "out")
    assert len(rows) == 1 and rows[0]["iter"] == 0
    assert not (workdir / "out" / "model.safetensors").exists()


def test_block_size_larger_than_val_split(tiny_recipe, capsys):
    # 2,000 characters: the val split has 200 tokens, fewer than block_size + 1
    assert train.main([str(tiny_recipe(text_chars=2000, block_size=256))]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and "val split" in errors[0] and "200 tokens" in errors[0]
    assert "block_size + 1 = 257" in errors[0]


def test_missing_data_without_source(workdir, capsys):
    assert train.main(["--dataset=nothing", "--device=cpu"]) == 2
    err = capsys.readouterr().err
    assert "data/nothing/meta.json not found" in err and "source" in err


def test_init_from_unknown_model_offline(tiny_recipe, capsys):
    assert train.main([str(tiny_recipe()), "--init_from=nobody/missing-model"]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and "init_from='nobody/missing-model'" in errors[0] and "hf download" in errors[0]


@pytest.mark.e2e
def test_bf16_training_on_cpu_uses_the_training_attention_and_saves_plain_sdpa(tiny_recipe, workdir):
    recipe = tiny_recipe(mixed_precision="bf16")
    bf16_recipe = load_recipe(str(recipe))
    run = training_run.setup(bf16_recipe, training_run.make_accelerator(bf16_recipe))
    assert run.accelerator.mixed_precision == "bf16"
    assert causal_lm(run.model).config._attn_implementation == "hfgpt_sdpa"
    assert train.main([str(recipe)]) == 0
    rows = read_metrics(workdir / "out")
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5
    config = json.loads((workdir / "out" / "config.json").read_text())
    assert not any("attn_implementation" in key for key in config)  # nothing hfgpt-only in the saved model
    assert config.get("pad_token_id") is None  # only generation_config has it (see test_attention)
    assert json.loads((workdir / "out" / "generation_config.json").read_text())["pad_token_id"] == config["eos_token_id"]
    model = GPT2LMHeadModel.from_pretrained(workdir / "out")
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.e2e
def test_compiled_run_saves_plain_weights(tiny_recipe, workdir):
    """torch.compile wraps the model; the saved folder and checkpoint hold GPT-2's own names."""
    recipe = tiny_recipe(compile=True, max_iters=10, eval_interval=10, lr_decay_iters=10)
    assert train.main([str(recipe)]) == 0
    for path in (workdir / "out" / "model.safetensors",
                 workdir / "out" / "checkpoints" / "iter-000010" / "model.safetensors"):
        keys = load_file(path).keys()
        assert "transformer.wte.weight" in keys and not any("_orig_mod" in k for k in keys), path
    model, info = GPT2LMHeadModel.from_pretrained(workdir / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert train.main([str(recipe), "--init_from=resume", "--max_iters=12", "--compile=False"]) == 0


@pytest.mark.parametrize("config", [
    GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=65, n_positions=32),
    GPT2Config(n_layer=3, n_head=3, n_embd=48, vocab_size=300, n_positions=64, n_inner=100),
    LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64, intermediate_size=160,
                vocab_size=70, tie_word_embeddings=True),
    LlamaConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, intermediate_size=128, vocab_size=70)],
    ids=["gpt2", "gpt2-n_inner", "llama-gqa-tied", "llama-untied"])
def test_the_memory_estimate_counts_every_parameter(config):
    from transformers import AutoModelForCausalLM

    n = AutoModelForCausalLM.from_config(config).num_parameters()
    assert count_parameters(config) == n
    check_fits(config, available=n * 16, where="RAM")  # exactly enough
    with pytest.raises(UserError, match=r"needs at least 0.0 GB \(16 bytes per parameter.* but RAM has 0.0 GB"):
        check_fits(config, available=n * 16 - 1, where="RAM")


@pytest.mark.e2e
def test_the_fast_cpu_recipe_trains_a_one_block_model_with_muon(workdir, shakespeare):
    """shakespeare_char_cpu_fast.yaml as shipped, shortened to 30 iterations on the local tiny
    Shakespeare: Muon and WSD train it and out_dir is a one-block GPT-2 that transformers loads."""
    from tests.conftest import ROOT

    args = [str(ROOT / "recipes" / "shakespeare_char_cpu_fast.yaml"), f"--source={shakespeare}", "--out_dir=fast",
            "--max_iters=30", "--lr_decay_iters=30", "--eval_interval=30", "--warmup_iters=5", "--mixed_precision=no"]
    assert train.main(args) == 0
    rows = read_metrics(workdir / "fast")
    evals = [r for r in rows if "val_loss" in r]
    assert [r["iter"] for r in evals] == [0, 30] and evals[-1]["val_loss"] < evals[0]["val_loss"] - 1
    model = GPT2LMHeadModel.from_pretrained(workdir / "fast")
    assert model.config.n_layer == 1 and model.config.n_embd == 128


def test_fp16_skipped_steps_are_counted_and_logged_with_a_fused_optimizer(tiny_recipe, workdir, monkeypatch, capsys):
    """fp16's loss scaler skips the steps whose gradients overflow; with a fused AdamW (hfgpt's on CUDA
    and CPU) GradScaler lets the optimizer's kernel skip them, so accelerate's step_was_skipped stays
    False: hfgpt counts them itself, in metrics.jsonl (skipped_steps), state.json and the summary. On the
    CPU, as the CUDA scaler works: accelerate's fp16 with torch's CPU GradScaler, starting at a scale
    of 2**127 (the first steps overflow)."""
    import accelerate

    class Fp16OnCpu(accelerate.Accelerator):
        def __init__(self, **options):
            super().__init__(**options)
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)

    monkeypatch.setattr(training_run, "resolve_mixed_precision", lambda requested, dev: "fp16")
    monkeypatch.setattr(training_run, "Accelerator", Fp16OnCpu)
    seen = []
    real_step = training_run.step_optimizer

    def step(run):
        before = [p.detach().clone() for p in run.model.parameters()]
        real_step(run)
        seen.append(all(torch.equal(a, b) for a, b in zip(before, run.model.parameters())))
        assert run.optimizer.step_was_skipped is False and run.optimizer.optimizer.defaults["fused"]

    monkeypatch.setattr(training_run, "step_optimizer", step)
    assert train.main([str(tiny_recipe(max_iters=12, eval_interval=12, lr_decay_iters=12, log_interval=4))]) == 0
    skipped = sum(seen)
    assert 1 <= skipped < 12  # the scale halves at each overflow, then steps are taken
    rows = [r for r in read_metrics(workdir / "out") if "loss" in r]
    assert [r["iter"] for r in rows] == [4, 8, 12] and rows[-1]["skipped_steps"] == skipped
    state = json.loads((workdir / "out" / "checkpoints" / "iter-000012" / "state.json").read_text())
    assert state["skipped_steps"] == skipped
    assert f"{skipped:,} optimizer steps skipped by the loss scaler" in capsys.readouterr().out


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["scratch", "auto then resume", "resume_from a folder", "time_budget"])
def test_train_leaves_the_callers_recipe_as_given(tiny_recipe, workdir, case):
    """train(recipe) resolves a copy of its own (auto, the tokenizer, resume_from, a budget's plan):
    the recipe it is given is equal before and after, however the run starts."""
    import copy

    from hfgpt.training.loop import train as run_training

    def given(**overrides):
        return load_recipe(str(tiny_recipe(**{"max_iters": 6, "eval_interval": 3, **overrides})), [])

    def unchanged(recipe) -> dict:
        before = copy.deepcopy(recipe)
        result = run_training(recipe)
        assert recipe == before
        return result

    if case == "scratch":
        assert unchanged(given(tokenizer=None))["iters"] == 6  # resolved: char
    elif case == "auto then resume":
        assert unchanged(given(init_from="auto"))["iters"] == 6
        assert unchanged(given(init_from="auto", max_iters=9))["iters"] == 9  # now a resume
    elif case == "resume_from a folder":
        assert unchanged(given())["iters"] == 6
        folder = workdir / "out" / "checkpoints" / "iter-000006"
        result = unchanged(given(init_from="resume", resume_from=str(folder), out_dir=str(workdir / "again"), max_iters=9))
        assert (result["iters"], result["out_dir"]) == (9, str(workdir / "again"))
    else:  # no dataset and no out_dir: the run names both after the source, and plans the rest
        tiny_recipe()  # writes tiny.txt
        values = {k: v for k, v in TINY.items() if k != "dataset"}
        recipe = load_recipe(None, {**values, "source": "tiny.txt", "time_budget": "60s", "max_iters": 6, "eval_interval": 3})
        assert unchanged(recipe)["out_dir"] == "out-tiny"
