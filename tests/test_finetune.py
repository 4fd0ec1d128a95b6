"""Fine-tuning as users do it: from a local folder (block_size cropped), gpt2-medium from the Hub with
its own tokenizer, bias: false on a loaded model, float32 master weights, gradient checkpointing,
LoRA, the card's snippet, and tokenizer folders that transformers 4.x and 5.x both read.

The model is a tiny stand-in for openai-community/gpt2-medium (conftest's gpt2_medium_dir: GPT-2's
files, config keys and tokenizer, 2 layers x 32), from a folder or, over HTTP, from tests/tools/fake_hub.py.
"""

import json
import re
import subprocess
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hfgpt import train
from hfgpt.config import load_recipe
from hfgpt.core import layout
from hfgpt.data.tokenizer import LOADING_KEYS, byte_tokenizer, char_tokenizer, load_tokenizer, save_tokenizer, train_bpe
from hfgpt.model.gpt import build_model, causal_lm
from hfgpt.model.lora import quiet_peft
from hfgpt.training import checkpoint, run as training_run
from tests.conftest import PYTHON, TINY, run_env
from tests.helpers import read_metrics, run
from tests.tools.fake_hub import FakeHub
from tests.test_hub import hub_env, run_script

FINETUNE = {**{k: v for k, v in TINY.items() if k != "tokenizer"}, "block_size": 64, "batch_size": 4,
            "max_iters": 4, "eval_interval": 2, "eval_iters": 2, "log_interval": 1, "learning_rate": 1e-2,
            "warmup_iters": 1, "lr_decay_iters": 4, "min_lr": 1e-3, "dropout": 0.1, "keep_last": None}
REPO = "openai-community/gpt2-medium"


def write_recipe(workdir, text: str, name: str = "finetune.yaml", **overrides):
    """A fine-tuning recipe on `text` with no tokenizer key (the model's own is used)."""
    source = workdir / "text.txt"
    source.write_text(text, encoding="utf-8")
    path = workdir / name
    path.write_text(yaml.safe_dump({**FINETUNE, "source": str(source), "out_dir": str(workdir / "out"), **overrides}))
    return str(path)


def card_code(folder) -> str:
    """The Python code block of the model card's "Use it" section."""
    return re.search(r"## Use it\s+```python\n(.*?)\n```", (folder / "README.md").read_text(), re.S).group(1) + "\n"


def metrics(out_dir):
    return [(r["iter"], r.get("loss"), r.get("val_loss")) for r in read_metrics(out_dir)]


def assert_portable_tokenizer(folder, block_size: int | None):
    """tokenizer_config.json as transformers 4.x reads it too: a class 4.x has, no loading-time keys,
    and in a model folder model_max_length = the context."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] in ("PreTrainedTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast"), folder
    assert not set(config) & set(LOADING_KEYS) and not any(k.startswith("_") for k in config), folder
    assert config["model_input_names"] == ["input_ids", "attention_mask"], folder  # no token_type_ids in 4.x
    if block_size is not None:
        assert config["model_max_length"] == block_size, folder


@pytest.fixture(scope="module")
def gpt2_medium_hub(gpt2_medium_dir):
    """The fake Hub serving the tiny gpt2-medium as openai-community/gpt2-medium (gpt2-medium redirects there)."""
    with FakeHub(lfs_mode="lfs") as hub:
        hub.add_files("model", REPO, {p.name: p.read_bytes() for p in gpt2_medium_dir.iterdir()})
        yield hub


@pytest.mark.e2e
def test_gpt2_medium_from_the_hub_prepares_with_its_tokenizer_trains_resumes_samples_and_loads(
        workdir, shakespeare_text, gpt2_medium_hub):
    recipe = write_recipe(workdir, shakespeare_text[:20_000], init_from="gpt2-medium", sample_start="ROMEO:")
    env = hub_env(gpt2_medium_hub, workdir / "hf-home", "lfs")
    run_script(f"""
        import json
        from accelerate.state import AcceleratorState
        from hfgpt import train
        assert train.main([{recipe!r}]) == 0
        AcceleratorState._reset_state(reset_partial_state=True)  # as a new process
        assert train.main([{recipe!r}, "--init_from=resume", "--max_iters=6"]) == 0
        for args in (["--max_iters=2"], ["--init_from=resume"]):  # LoRA: resume loads the base from the Hub again
            AcceleratorState._reset_state(reset_partial_state=True)
            assert train.main([{recipe!r}, "--lora_r=8", "--out_dir=out-lora", *args]) == 0
        print(json.dumps({{}}))
    """, env, workdir)
    assert any(path.startswith(f"/api/models/{REPO}") for _, path in gpt2_medium_hub.requests)  # really over HTTP
    adapter = json.loads((workdir / "out-lora" / "adapter" / "adapter_config.json").read_text())
    served = gpt2_medium_hub.history("model", REPO)[-1]["oid"]
    assert (adapter["base_model_name_or_path"], adapter["revision"]) == ("gpt2-medium", served)  # the exact base
    assert [i for i, loss, _ in metrics(workdir / "out-lora") if loss is not None] == [1, 2, 3, 4]

    meta = json.loads((workdir / "data" / "tiny" / "meta.json").read_text())
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_token_id"]) == ("gpt2-medium", 50257, 50256)
    out = workdir / "out"
    assert [i for i, loss, _ in metrics(out) if loss is not None] == [1, 2, 3, 4, 5, 6]
    config = json.loads((out / "config.json").read_text())
    # n_ctx too (gpt2-medium's config.json says 1024): llama.cpp's converter reads the context from it
    assert config["n_positions"] == config["n_ctx"] == 64 and config["dtype"] == "float32"
    assert not config.get("task_specific_params")
    for folder, block_size in ((out, 64), (out / "checkpoints" / "iter-000006", 64),
                               (workdir / "data" / "tiny" / "tokenizer", None)):
        assert_portable_tokenizer(folder, block_size)

    # plain transformers: the card's snippet as written, with end-of-text suppressed so that only the
    # 64-token context bounds it; then hfgpt.sample past the context
    code = card_code(out).replace("print(", "generator.model.generation_config.suppress_tokens = [50256]\nprint(", 1)
    result = subprocess.run([PYTHON, "-W", "always", "-c", "import sys\n" + code + textwrap.dedent(f"""
        assert not any(m.startswith("hfgpt") for m in sys.modules), "hfgpt was imported"
        print(generator.tokenizer("Hello world")["input_ids"])
        from hfgpt import sample
        assert sample.main([{str(out)!r}, "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=80", "--device=cpu"]) == 0
    """)], capture_output=True, text=True, env=run_env(), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[15496, 995]" in result.stdout  # GPT-2's own ids for "Hello world"
    assert not re.search(r"max_length|max_new_tokens|[Ww]arning", result.stderr), result.stderr


def test_char_data_with_a_gpt2_model_stops_before_training(workdir, shakespeare_text, gpt2_medium_dir, capsys):
    recipe = write_recipe(workdir, shakespeare_text[:20_000], init_from=str(gpt2_medium_dir), tokenizer="char")
    assert train.main([recipe]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "char tokenizer" in errors[0] and f"{gpt2_medium_dir} has its own tokenizer" in errors[0]
    assert not (workdir / "out" / "model.safetensors").exists()


@pytest.mark.e2e
def test_finetune_from_a_local_folder_crops_block_size(tiny_recipe, workdir):
    assert train.main([str(tiny_recipe(max_iters=10, eval_interval=10))]) == 0
    base = workdir / "base"
    (workdir / "out").rename(base)
    assert train.main([str(tiny_recipe(max_iters=10, eval_interval=10)), f"--init_from={base}", "--block_size=16",
                       "--dropout=0.1"]) == 0
    config = json.loads((workdir / "out" / "config.json").read_text())
    assert config["n_positions"] == 16 and config["attn_pdrop"] == 0.1
    weights = load_file(workdir / "out" / "model.safetensors")
    assert weights["transformer.wpe.weight"].shape == (16, 32)


@pytest.mark.e2e
def test_bias_false_on_a_loaded_model_is_zero_from_the_start_and_resumes_exactly(tiny_recipe, workdir, capsys):
    assert train.main([str(tiny_recipe(max_iters=2, eval_interval=2))]) == 0
    base = workdir / "base"
    (workdir / "out").rename(base)  # a model with trained (non-zero) biases
    common = {"init_from": str(base), "bias": False, "dropout": 0.1, "max_iters": 8, "eval_interval": 4,
              "lr_decay_iters": 8, "log_interval": 1, "keep_last": None}
    straight = tiny_recipe("straight.yaml", out_dir=str(workdir / "a"), **common)
    split = tiny_recipe("split.yaml", out_dir=str(workdir / "b"), **common)
    assert train.main([str(straight)]) == 0
    said = capsys.readouterr().out
    assert "zeroed and froze the 13 bias tensors" in said and "(13 were not zero" in said
    assert train.main([str(split), "--max_iters=4"]) == 0
    assert train.main([str(split), "--init_from=resume"]) == 0
    assert metrics(workdir / "a") == metrics(workdir / "b")
    for folder in (workdir / "a", workdir / "b" / "checkpoints" / "iter-000008"):
        weights = load_file(folder / "model.safetensors")
        biases = [v for k, v in weights.items() if k.endswith(".bias")]
        assert len(biases) == 13 and all(torch.count_nonzero(v) == 0 for v in biases)
    assert all(torch.equal(v, load_file(workdir / "b" / "model.safetensors")[k])
               for k, v in load_file(workdir / "a" / "model.safetensors").items())


@pytest.mark.e2e
def test_lora_trains_adapters_only_merges_exactly_resumes_bitwise_in_small_checkpoints(
        workdir, shakespeare_text, gpt2_medium_dir, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = {"init_from": str(gpt2_medium_dir), "lora_r": 8}
    straight = write_recipe(workdir, shakespeare_text[:20_000], "straight.yaml", out_dir=str(workdir / "a"), **lora)
    split = write_recipe(workdir, shakespeare_text[:20_000], "split.yaml", out_dir=str(workdir / "b"), **lora)
    assert train.main([straight]) == 0
    assert train.main([split, "--max_iters=2"]) == 0
    assert train.main([split, "--init_from=resume", "--lora_r=4"]) == 2  # the adapters' shape cannot change
    assert train.main([straight, "--lora_target_modules=[q_proj]", f"--out_dir={workdir / 'c'}"]) == 2
    assert "lora_target_modules: q_proj is no module of" in capsys.readouterr().err
    assert train.main([split, "--init_from=resume"]) == 0
    a, b = workdir / "a", workdir / "b"
    assert metrics(a) == metrics(b)

    # the checkpoint: the adapter and its AdamW state only, bitwise the same after the resume
    ckpt = a / "checkpoints" / "iter-000004"
    adapter = load_file(ckpt / "adapter" / "adapter_model.safetensors")
    assert len(adapter) == 16 and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert all(torch.equal(v, load_file(b / ckpt.relative_to(a) / "adapter" / "adapter_model.safetensors")[k])
               for k, v in adapter.items())
    assert len(load_file(ckpt / "optimizer.safetensors")) == 3 * 16  # step, exp_avg, exp_avg_sq per adapter tensor
    ckpt_bytes = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert ckpt_bytes < 0.05 * (a / "model.safetensors").stat().st_size

    # out_dir: the base with the adapters merged into the adapted weights, nothing else changed
    base, merged = load_file(gpt2_medium_dir / "model.safetensors"), load_file(a / "model.safetensors")
    assert merged.keys() == base.keys()
    for key, value in merged.items():
        adapted = re.search(r"\.(c_attn|c_proj|c_fc)\.weight$", key) is not None
        assert torch.equal(value, base[key][:64] if key == "transformer.wpe.weight" else base[key]) != adapted, key
    x = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(a).eval()(x).logits
        with quiet_peft():
            with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(gpt2_medium_dir), a / "adapter")
        with_adapter = with_adapter.eval()(x).logits
    assert (plain - with_adapter).abs().max() < 1e-5
    assert json.loads((a / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(gpt2_medium_dir)
    card = (a / "README.md").read_text()
    assert "LoRA" in card and "r=8" in card and f"`{gpt2_medium_dir}`" in card

    # the card's snippet runs as written where peft cannot even be imported
    result = subprocess.run([PYTHON, "-c", "import sys\nsys.modules['peft'] = None\n" + card_code(a)], capture_output=True,
                            text=True, env=run_env(), cwd=workdir)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr[-2000:]


@pytest.fixture(scope="module")
def block64_run(tmp_path_factory, shakespeare_text):
    """A char model with a 64-token context, trained 4 iterations: out_dir, a checkpoint, the data."""
    work = tmp_path_factory.mktemp("block64")
    (work / "text.txt").write_text(shakespeare_text[:50_000], encoding="utf-8")
    recipe = {**TINY, "source": str(work / "text.txt"), "data_dir": str(work / "data"), "out_dir": str(work / "out"),
              "block_size": 64, "max_iters": 4, "eval_interval": 4, "lr_decay_iters": 4, "warmup_iters": 1,
              "sample_start": "ROMEO:"}
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert train.main([str(work / "recipe.yaml")]) == 0
    return work


def test_every_saved_tokenizer_folder_reads_in_transformers_4_and_5(block64_run, tmp_path):
    from hfgpt import convert

    out = block64_run / "out"
    assert_portable_tokenizer(out, 64)
    assert_portable_tokenizer(out / "checkpoints" / "iter-000004", 64)
    assert_portable_tokenizer(block64_run / "data" / "tiny" / "tokenizer", None)
    assert convert.main(["to-nanogpt", str(out), str(tmp_path / "nano"), "--dataset=tiny"]) == 0
    assert convert.main(["to-hf", str(tmp_path / "nano" / "ckpt.pt"), str(tmp_path / "hf"),
                         f"--meta={tmp_path / 'nano' / 'meta.pkl'}"]) == 0
    assert_portable_tokenizer(tmp_path / "hf", 64)


# The last transformers 4.x, with the tokenizers and huggingface_hub it takes (5.x's are too new for it);
# torch and the rest come from the test's own environment.
TRANSFORMERS_4 = ("transformers==4.57.6", "tokenizers==0.22.2", "huggingface_hub==0.36.2")
GREEDY = """
import json, sys, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
out = {"version": transformers.__version__}
for folder in sys.argv[1:]:
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    inputs = tok("ROMEO: what", return_tensors="pt")  # generate(**inputs): the way the model card's readers call it
    ids = model.generate(**inputs, do_sample=False, max_new_tokens=12)[0, inputs["input_ids"].shape[1]:]
    out[folder] = {"inputs": sorted(inputs), "ids": ids.tolist()}
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def transformers_4(request) -> str:
    """A folder holding transformers 4.57 (TRANSFORMERS_4), to put first on a subprocess's PYTHONPATH:
    installed from the package index once, into pytest's cache folder (.pytest_cache), and reused."""
    folder = request.config.cache.mkdir("transformers-4.57.6")
    if not (folder / "complete").exists():
        proc = run([PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target", str(folder),
                    *TRANSFORMERS_4], cwd=folder, timeout=300)
        assert proc.returncode == 0, f"pip could not install {' '.join(TRANSFORMERS_4)}: {proc.stderr[-2000:]}"
        (folder / "complete").touch()
    return str(folder)


@pytest.mark.e2e
def test_generate_from_tokenizer_inputs_gives_the_same_tokens_in_transformers_4_and_5(
        tmp_path, shakespeare_text, gpt2_dir, transformers_4):
    """transformers 4.x's tokenizers return token_type_ids unless the config names the model's inputs,
    and GPT-2 adds their embeddings when generate(**inputs) passes them on: other tokens, silently."""
    text = shakespeare_text[:20_000]
    folders = []
    for kind, tok in (("char", char_tokenizer(text)), ("byte", byte_tokenizer()), ("bpe", train_bpe(iter([text]), 400)),
                      ("gpt2", load_tokenizer(str(gpt2_dir)))):
        torch.manual_seed(0)
        model = build_model(load_recipe(overrides={**TINY, "block_size": 64}).model, len(tok), tok.eos_token_id)
        model.save_pretrained(tmp_path / kind)
        save_tokenizer(tok, tmp_path / kind, 64)
        folders.append(str(tmp_path / kind))
    env = run_env()
    v4 = run([PYTHON, "-c", GREEDY, *folders], tmp_path, {**env, "PYTHONPATH": f"{transformers_4}:{env['PYTHONPATH']}"})
    v5 = run([PYTHON, "-c", GREEDY, *folders], tmp_path, env)
    assert v4.returncode == 0 and v5.returncode == 0, v4.stderr[-3000:] + v5.stderr[-3000:]
    v4, v5 = json.loads(v4.stdout.splitlines()[-1]), json.loads(v5.stdout.splitlines()[-1])
    assert v4.pop("version") == "4.57.6" and v5.pop("version").startswith("5.")
    for folder in folders:
        assert v4[folder]["inputs"] == v5[folder]["inputs"] == ["attention_mask", "input_ids"], folder
        assert v4[folder]["ids"] == v5[folder]["ids"] and len(v5[folder]["ids"]) == 12, folder


def test_master_weights_are_float32_whatever_the_stored_dtype(tiny_recipe, workdir, shakespeare_text):
    recipe = tiny_recipe()  # writes the text the char tokenizer is built from
    tokenizer = char_tokenizer(set(shakespeare_text[:100_000]))
    m = load_recipe(str(recipe)).model
    build_model(m, vocab_size=len(tokenizer), eot_token_id=None).to(torch.bfloat16).save_pretrained(workdir / "bf16")
    save_tokenizer(tokenizer, workdir / "bf16", m.block_size)
    assert json.loads((workdir / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    r = load_recipe(str(recipe), {"init_from": str(workdir / "bf16")})
    run = training_run.setup(r, training_run.make_accelerator(r))
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}


def test_gradient_checkpointing_computes_the_same_steps(tiny_recipe):
    recipe = tiny_recipe(dropout=0.1)
    losses = {}
    for on in (False, True):
        r = load_recipe(str(recipe), {"gradient_checkpointing": on})
        torch.manual_seed(0)
        run = training_run.setup(r, training_run.make_accelerator(r))
        assert causal_lm(run.model).is_activation_checkpointing == on
        window = run.batches.next_window()
        losses[on] = []
        for _ in range(3):
            loss, window = training_run.train_step(run, window, r.optim.grad_clip)
            losses[on].append(loss.item())
    assert losses[True] == losses[False]  # non-reentrant checkpointing replays dropout's random numbers


@pytest.mark.parametrize("always_save, kept", [(True, [20, 40]), (False, [40])])
def test_the_best_checkpoint_is_kept_only_when_out_dir_is_not_the_best_model(tmp_path, always_save, kept):
    for it, val in ((10, 3.0), (20, 1.0), (30, 2.0), (40, 2.5)):
        folder = layout.checkpoint_path(tmp_path, it)
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps({"iter": it, "val_loss": val}))
    checkpoint.prune(tmp_path, keep_last=1, keep_best=always_save)
    assert [state["iter"] for _, state in layout.list_checkpoints(tmp_path)] == kept
