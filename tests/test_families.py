"""Any causal LM: the families people fine-tune (Llama, Qwen2, Qwen3, Mistral, GPT-NeoX, Gemma, Phi-3,
OPT, Mixtral, Bloom, GPT-2), tiny and random, built by tests/tools/families.py with their own kind of
tokenizer. Full fine-tuning and LoRA resume bitwise into plain folders of the family, which
transformers' pipeline samples in a process without hfgpt; documents carry the tokenizer's BOS
and EOS, checked by id; dropout, bias, block_size, LoRA targets, MFU, the FSDP unit and the
compiled attention follow each family's own layers."""

import json
import subprocess
import textwrap

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from hfgpt import convert, prepare, sample, train
from hfgpt import eval as hfgpt_eval
from hfgpt.model.families import linear_layer_names, model_shape, transformer_blocks
from tests.conftest import PYTHON, TINY, run_env
from tests.tools.families import FAMILY_SPECS, make_model_folder
from tests.helpers import error_lines, read_metrics

# the families the issue names, and more of other shapes: OPT's offset position table, Gemma 3's
# local layers, Mixtral's experts, Bloom's ALiBi (no positions at all), Phi-3's fused projections
FULL = ("llama", "qwen2", "qwen3", "mistral", "gpt_neox", "gpt2", "opt", "gemma3", "mixtral", "bloom", "phi3")
LORA = ("llama", "qwen2", "qwen3", "mistral", "gpt_neox", "gemma", "opt")
RECIPE = {**{k: v for k, v in TINY.items() if k != "tokenizer"}, "block_size": 32, "batch_size": 4, "max_iters": 6,
          "eval_interval": 3, "eval_iters": 2, "log_interval": 1, "learning_rate": 3e-3, "warmup_iters": 1,
          "lr_decay_iters": 6, "min_lr": 3e-4, "dropout": 0.1, "keep_last": None}
LEARNED_POSITIONS = ("gpt2", "opt")  # the others are rotary (or ALiBi): no table to crop


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="module")
def folder_of(base, shakespeare_text):
    """family -> a saved tiny model of it (made once per module)."""
    made = {}

    def get(family):
        if family not in made:
            made[family] = make_model_folder(family, base / "models" / family, shakespeare_text[:100_000])
        return made[family]

    return get


def write_recipe(folder, name: str, **values) -> str:
    path = folder / name
    path.write_text(yaml.safe_dump({**RECIPE, **values}))
    return str(path)


@pytest.fixture(scope="module")
def trained(base, folder_of, shakespeare_text):
    """family -> (recipe, out_dir) of a 6-iteration full fine-tune with dropout (checkpoints at 3 and
    6), run once per module; the data is prepared with the model's own tokenizer."""
    (base / "text.txt").write_text(shakespeare_text[:30_000], encoding="utf-8")
    runs = {}

    def get(family, **extra):
        key = (family, tuple(sorted(extra.items())))
        if key not in runs:
            work = base / "runs" / f"{family}{'-lora' if extra else ''}"
            work.mkdir(parents=True)
            recipe = write_recipe(work, "recipe.yaml", init_from=str(folder_of(family)), source=str(base / "text.txt"),
                                  dataset=f"ft-{family}", data_dir=str(base / "data"), out_dir=str(work / "out"), **extra)
            assert train.main([recipe]) == 0
            runs[key] = recipe, work / "out"
        return runs[key]

    return get


def same_tensors(a, b) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def resume_elsewhere(recipe, out, again) -> None:
    """Continue the run from its iteration-3 checkpoint into another out_dir, to iteration 6."""
    assert train.main([recipe, "--init_from=resume", f"--resume_from={out / 'checkpoints' / 'iter-000003'}",
                       f"--out_dir={again}"]) == 0


@pytest.mark.e2e
@pytest.mark.parametrize("family", FULL)
def test_full_fine_tuning_resumes_bitwise_into_a_plain_folder_of_the_family(family, trained, folder_of, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe, out = trained(family)
    resume_elsewhere(recipe, out, tmp_path / "again")
    assert same_tensors(out / "model.safetensors", tmp_path / "again" / "model.safetensors")
    losses = [(r["iter"], r["loss"]) for r in read_metrics(out) if "loss" in r]
    assert [i for i, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert [(r["iter"], r["loss"]) for r in read_metrics(tmp_path / "again") if "loss" in r] == losses[3:]

    config, base_config = (json.loads((f / "config.json").read_text()) for f in (out, folder_of(family)))
    assert (config["model_type"], config["architectures"]) == (base_config["model_type"], base_config["architectures"])
    assert config["dtype"] == "float32"
    model = AutoModelForCausalLM.from_pretrained(out)
    limit = model_shape(model.config).context
    assert limit == (32 if family in LEARNED_POSITIONS else model_shape(
        AutoModelForCausalLM.from_pretrained(folder_of(family)).config).context)
    assert json.loads((out / "generation_config.json").read_text())["max_length"] == 32
    assert hfgpt_eval.main([str(out)]) == 0  # scored on the whole val split, in windows of the trained block_size
    results = json.loads((out / "eval_results.json").read_text())
    assert results["block_size"] == 32 and results["loss"] < 6


@pytest.mark.e2e
@pytest.mark.parametrize("family", LORA)
def test_lora_adapts_every_linear_layer_merges_into_the_family_and_resumes_bitwise(family, trained, folder_of, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hfgpt.model.lora import quiet_peft

    recipe, out = trained(family, lora_r=4)
    resume_elsewhere(recipe, out, tmp_path / "again")
    adapter = out / "adapter" / "adapter_model.safetensors"
    assert same_tensors(adapter, tmp_path / "again" / "adapter" / adapter.relative_to(out / "adapter"))
    assert same_tensors(out / "model.safetensors", tmp_path / "again" / "model.safetensors")

    base = AutoModelForCausalLM.from_pretrained(folder_of(family))
    targets = json.loads((out / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert sorted(targets) == sorted(linear_layer_names(base)) and len(targets) >= 4
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged) is type(base)
    with quiet_peft():
        adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    x = torch.randint(0, base.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (merged(x).logits - adapted(x).logits).abs().max() < 1e-5


@pytest.mark.e2e
def test_saved_folders_sample_with_plain_transformers_as_hfgpt_does(trained, capsys):
    """Each family's out_dir in a process that never imports hfgpt: pipeline as on the model card,
    greedy; hfgpt.sample (greedy) gives the same text, its prompt read after the same BOS."""
    outs = {family: str(trained(family)[1]) for family in ("llama", "qwen2", "mistral", "gpt_neox", "opt", "gpt2")}
    script = textwrap.dedent(f"""
        import json, sys
        from transformers import pipeline
        texts = {{}}
        for family, out in {outs!r}.items():
            generator = pipeline("text-generation", model=out)
            texts[family] = generator("ROMEO:", do_sample=False, max_new_tokens=8)[0]["generated_text"]
        assert not any(m.startswith("hfgpt") for m in sys.modules), "hfgpt was imported"
        print(json.dumps(texts))
    """)
    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=run_env())
    assert result.returncode == 0, result.stderr[-3000:]
    plain = json.loads(result.stdout.strip().splitlines()[-1])
    for family, out in outs.items():
        capsys.readouterr()
        assert sample.main([out, "--start=ROMEO:", "--temperature=0", "--num_samples=1", "--max_new_tokens=8",
                            "--device=cpu"]) == 0
        assert capsys.readouterr().out.split("\n---------------")[0] == plain[family], family
        assert plain[family].startswith("ROMEO:"), family


def document_ids(tok, text: str, family: str) -> list[int]:
    """What one document must become in the token files: the family's BOS when its tokenizer adds
    one, the text's own ids, the EOS."""
    _, _, (bos, eos, adds_bos) = FAMILY_SPECS[family]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ([tok.convert_tokens_to_ids(bos)] if adds_bos else []) + ids + [tok.convert_tokens_to_ids(eos)]


@pytest.mark.parametrize("family", ("llama", "qwen2", "gpt_neox", "opt", "gemma", "gpt2"))
def test_every_document_starts_with_the_tokenizers_bos_and_ends_with_its_eos(family, folder_of, workdir, shakespeare_text):
    from transformers import AutoTokenizer

    docs = [shakespeare_text[i * 3000:(i + 1) * 3000] for i in range(4)]
    with open(workdir / "docs.jsonl", "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    recipe = write_recipe(workdir, "docs.yaml", init_from=str(folder_of(family)), source=str(workdir / "docs.jsonl"),
                          dataset="docs", val_fraction=0.25)
    assert prepare.main([recipe]) == 0
    folder = workdir / "data" / "docs"
    meta = json.loads((folder / "meta.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder_of(family))
    tokens = {split: np.fromfile(folder / f"{split}.bin", dtype=meta["dtype"]).tolist() for split in ("train", "val")}
    expected = [document_ids(tok, doc, family) for doc in docs]
    val = [e for e in expected if e == tokens["val"]]
    assert len(val) == 1
    assert tokens["train"] == [i for e in expected if e is not val[0] for i in e]
    _, _, (bos, eos, adds_bos) = FAMILY_SPECS[family]
    assert meta["document_start"] == ([bos] if adds_bos else []) and meta["document_end"] == [eos]
    assert meta["document_start_ids"] == expected[0][:int(adds_bos)]

    # one text file is one stream, as nanoGPT's: the tokenizer's own BOS first, no EOS added
    (workdir / "one.txt").write_text(docs[0] + docs[1], encoding="utf-8")
    recipe = write_recipe(workdir, "one.yaml", init_from=str(folder_of(family)), source=str(workdir / "one.txt"),
                          dataset="one")
    assert prepare.main([recipe]) == 0
    meta = json.loads((workdir / "data" / "one" / "meta.json").read_text())
    stream = np.fromfile(workdir / "data" / "one" / "train.bin", dtype=meta["dtype"]).tolist() + \
        np.fromfile(workdir / "data" / "one" / "val.bin", dtype=meta["dtype"]).tolist()
    assert stream == document_ids(tok, docs[0] + docs[1], family)[:-1]
    assert meta["document_end"] == []


def test_data_prepared_before_the_separators_is_prepared_again_for_model_tokenizers(folder_of, workdir, tiny_recipe, capsys):
    text = workdir / "t.txt"
    text.write_text("To be, or not to be, that is the question. " * 200, encoding="utf-8")
    for name, tokenizer_setting, again in (("llama", {"init_from": str(folder_of("llama"))}, True),
                                           ("char", {"tokenizer": "char"}, False)):
        recipe = write_recipe(workdir, f"{name}.yaml", source=str(text), dataset=name, block_size=16, **tokenizer_setting)
        assert prepare.main([recipe]) == 0
        path = workdir / "data" / name / "meta.json"
        meta = json.loads(path.read_text())
        old = {k: v for k, v in meta.items() if not k.startswith("document_")}  # as hfgpt before this wrote it
        path.write_text(json.dumps(old))
        capsys.readouterr()
        assert prepare.main([recipe]) == 0
        assert ("preparing it again" in capsys.readouterr().out) is again, name
        assert ("document_start_ids" in json.loads(path.read_text())) is again


@pytest.mark.parametrize("family, keys, said", [
    ("llama", ["attention_dropout"], "dropout=0.1: set attention_dropout of llama"),
    ("gpt_neox", ["attention_dropout", "hidden_dropout"], "dropout=0.1: set attention_dropout, hidden_dropout of gpt_neox"),
    ("gpt2", ["embd_pdrop", "attn_pdrop", "resid_pdrop"], "dropout=0.1: set embd_pdrop, attn_pdrop, resid_pdrop of gpt2"),
    ("opt", ["dropout", "attention_dropout"], "dropout=0.1: set attention_dropout, dropout of opt"),
    ("mamba", [], "dropout=0.1: mamba models have no dropout setting"),
])
def test_dropout_goes_to_the_familys_own_settings(family, keys, said, folder_of, capsys):
    from hfgpt.model.gpt import load_model

    model = load_model(str(folder_of(family)), block_size=32, dropout=0.1, say=print)
    assert said in capsys.readouterr().out
    config = model.config.to_dict()
    assert {k: config[k] for k in keys} == {k: 0.1 for k in keys}


@pytest.mark.e2e
def test_bias_false_on_a_family_without_biases_says_so(trained, capsys):
    recipe, out = trained("llama")
    capsys.readouterr()
    assert train.main([recipe, "--bias=False", "--max_iters=1", f"--out_dir={out.parent / 'no-bias'}"]) == 0
    assert "has no biases; nothing to do" in capsys.readouterr().out


def test_block_size_past_a_rotary_models_context_is_one_line(trained, folder_of, capsys):
    recipe, out = trained("llama")
    assert train.main([recipe, "--block_size=300", f"--out_dir={out.parent / 'long'}"]) == 2
    assert error_lines(capsys) == [f"error: block_size=300 is larger than the 256 positions of {folder_of('llama')}: "
                                   "set block_size to 256 or less"]


def test_only_gpt2_converts_to_nanogpt_and_others_are_refused_before_their_weights_are_read(folder_of, tmp_path, capsys):
    import shutil

    folder = tmp_path / "llama"
    shutil.copytree(folder_of("llama"), folder)
    (folder / "model.safetensors").write_bytes(b"not read")
    assert convert.main(["to-nanogpt", str(folder), str(tmp_path / "nano")]) == 2
    assert error_lines(capsys) == [f"error: {folder} is a llama model (LlamaForCausalLM): only GPT-2 models convert to "
                                   "nanoGPT, whose GPT is GPT-2's block; the folder itself loads in transformers"]
    assert not (tmp_path / "nano").exists()


@pytest.mark.parametrize("family", ("llama", "qwen3", "gpt_neox", "opt", "phi3"))
def test_gradient_checkpointing_computes_the_same_gradients_in_every_family(family, folder_of):
    from hfgpt.model.gpt import enable_checkpointing, lm_loss, load_model

    plain = load_model(str(folder_of(family)), block_size=32, dropout=0.0).train()
    checkpointed = load_model(str(folder_of(family)), block_size=32, dropout=0.0).train()
    enable_checkpointing(checkpointed)
    x = torch.randint(0, plain.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    runs = []
    for model in (plain, checkpointed):
        inner = next(m for m in transformer_blocks(model)[0].modules() if isinstance(m, torch.nn.Linear))
        inner.register_forward_hook(lambda *_, model=model: runs.append(model))
        lm_loss(model, x[:, :-1], x[:, 1:]).backward()
    assert runs.count(plain) == 1 and runs.count(checkpointed) == 2  # recomputed in the backward
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.e2e
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_architecture_llama_builds_a_plain_llama_from_nanogpts_names_and_resumes_bitwise(optimizer, tiny_recipe, workdir):
    from transformers import LlamaForCausalLM

    llama = {"architecture": "llama", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32, "bias": False,
             "max_iters": 6, "eval_interval": 3, "lr_decay_iters": 6, "dropout": 0.1, "optimizer": optimizer,
             "keep_last": None}
    recipe = str(tiny_recipe(**llama))
    assert train.main([recipe]) == 0
    out = workdir / "out"
    resume_elsewhere(recipe, out, workdir / "again")
    assert same_tensors(out / "model.safetensors", workdir / "again" / "model.safetensors")

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert {k: config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                   "head_dim", "intermediate_size", "max_position_embeddings", "attention_bias",
                                   "mlp_bias", "tie_word_embeddings", "attention_dropout")} == {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "intermediate_size": 64, "max_position_embeddings": 32, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": True, "attention_dropout": 0.1}
    model = LlamaForCausalLM.from_pretrained(out)
    assert not any(name.endswith(".bias") for name, _ in model.named_parameters())
    assert "llama" in (out / "README.md").read_text().split("---")[1]  # the card's tags


@pytest.mark.parametrize("values, problem", [
    ({"n_kv_head": 2}, "n_kv_head=2 is for architecture: llama"),
    ({"architecture": "llama", "n_head": 4, "n_kv_head": 3},
     "n_kv_head=3 does not divide n_head=4: pick a divisor of n_head (1, 2, 4)"),
    ({"architecture": "llama", "n_head": 4, "n_embd": 36}, "architecture=llama rotates pairs of each head's 9 dimensions"),
    ({"architecture": "mamba"}, "architecture"),
])
def test_a_modern_block_with_impossible_numbers_is_one_line(values, problem, tiny_recipe, capsys):
    assert train.main([str(tiny_recipe(**values))]) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and problem in errors[0], errors


@pytest.mark.e2e
def test_a_llama_from_the_hub_fine_tunes_stops_resumes_adapts_pushes_evaluates_and_samples(tmp_path, workdir,
                                                                                            shakespeare_text):
    """A Llama-shaped model served by the fake Hub under a SmolLM2 id, the workflow GPT-2 has: over
    HTTP, prepared with its tokenizer; SIGTERM checkpoints (143), the resume continues it; LoRA's
    resume loads the pinned base; the folder is pushed, evaluated and sampled by plain transformers."""
    import signal
    import time

    from tests.tools.fake_hub import FakeHub
    from tests.test_hub import TOKEN, USER, hub_env, run_script

    repo = "HuggingFaceTB/SmolLM2-135M"
    folder = make_model_folder("llama", tmp_path / "smol", shakespeare_text[:100_000])
    (workdir / "text.txt").write_text(shakespeare_text[:30_000], encoding="utf-8")
    recipe = write_recipe(workdir, "recipe.yaml", init_from=repo, source=str(workdir / "text.txt"), dataset="smol",
                          out_dir=str(workdir / "out"), max_iters=100_000, lr_decay_iters=100_000, eval_interval=100_000)
    with FakeHub(lfs_mode="lfs", token=TOKEN, user=USER) as hub:
        hub.add_files("model", repo, {p.name: p.read_bytes() for p in folder.iterdir()})
        env = hub_env(hub, workdir / "hf-home", "lfs")
        proc = subprocess.Popen([PYTHON, "-m", "hfgpt.train", recipe], env=env, cwd=workdir, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not read_metrics(workdir / "out", running=True) and time.time() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 143, stderr[-2000:]
        stopped = max(r["iter"] for r in read_metrics(workdir / "out"))
        run_script(f"""
            import json
            from accelerate.state import AcceleratorState
            from hfgpt import eval, push, train
            short = ["--max_iters={stopped + 3}", "--lr_decay_iters={stopped + 3}", "--eval_interval={stopped + 3}"]
            for args in (["--init_from=resume", *short], ["--lora_r=4", "--out_dir=out-lora", "--max_iters=3",
                         "--lr_decay_iters=3", "--eval_interval=2"], ["--lora_r=4", "--out_dir=out-lora", "--init_from=resume",
                         "--max_iters=3", "--lr_decay_iters=3", "--eval_interval=2"]):
                AcceleratorState._reset_state(reset_partial_state=True)  # as a new process
                assert train.main([{recipe!r}, *args]) == 0, args
            assert push.main(["out", "--hub_model_id={USER}/smol-shakespeare"]) == 0
            assert eval.main(["{USER}/smol-shakespeare", "--dataset=smol", "--out=hub-eval.json"]) == 0
            print(json.dumps({{}}))
        """, env, workdir)
        assert any(path.startswith(f"/api/models/{repo}") for _, path in hub.requests)
        served = hub.history("model", repo)[-1]["oid"]
        assert hub.history("model", f"{USER}/smol-shakespeare")
    adapter = json.loads((workdir / "out-lora" / "adapter" / "adapter_config.json").read_text())
    assert (adapter["base_model_name_or_path"], adapter["revision"]) == (repo, served)
    assert [r["iter"] for r in read_metrics(workdir / "out") if "loss" in r] == list(range(1, stopped + 4))
    meta = json.loads((workdir / "data" / "smol" / "meta.json").read_text())
    assert (meta["tokenizer"], meta["document_start"]) == (repo, ["<s>"])
    assert json.loads((workdir / "hub-eval.json").read_text())["tokens"] == meta["val_tokens"] - 1  # all but the first
    card = (workdir / "out" / "README.md").read_text()
    assert f"base_model: {repo}" in card and "- llama" in card
    script = ("from transformers import pipeline\n"
              f"for out in ({str(workdir / 'out')!r}, {str(workdir / 'out-lora')!r}):\n"
              "    print(pipeline('text-generation', model=out)('ROMEO:', max_new_tokens=5)[0]['generated_text'])\n")
    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=run_env())
    assert result.returncode == 0 and result.stdout.count("ROMEO:") == 2, result.stderr[-2000:]


@pytest.mark.e2e
def test_the_users_recipe_with_a_llama_folder_as_init_from_trains_resumes_and_samples(folder_of, workdir, shakespeare_text,
                                                                                       capsys):
    """recipes/my_dataset.yaml as shipped, given a Llama-shaped folder and a text (the run shortened
    to 4 iterations for the test): what docs/finetuning.md shows."""
    from tests.conftest import ROOT

    (workdir / "my_text.txt").write_text(shakespeare_text[:200_000], encoding="utf-8")
    short = ["--max_iters=4", "--eval_interval=2", "--eval_iters=2", "--warmup_iters=1", "--lr_decay_iters=4"]
    args = [str(ROOT / "recipes" / "my_dataset.yaml"), f"--init_from={folder_of('llama')}", "--source=my_text.txt", *short]
    assert train.main(args) == 0
    again = [str(ROOT / "recipes" / "my_dataset.yaml"), "--source=my_text.txt", "--init_from=resume", *short[1:-1]]
    assert train.main([*again, "--max_iters=6", "--lr_decay_iters=6"]) == 0
    capsys.readouterr()
    assert sample.main(["out-my-dataset", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=20"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert [r["iter"] for r in read_metrics(workdir / "out-my-dataset") if "loss" in r] == [4, 6]  # log_interval 10: the ends
