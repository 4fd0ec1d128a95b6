"""python -m hfgpt.bench's modes: the figures come from the real training step, generation, fine-tuning
step, evaluation and optimizer step, and a race runs both sides as whole processes. (MFU: test_mfu.py.)"""

import json
import math

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from hfgpt import train
from hfgpt.bench import __main__ as bench
from tests.conftest import ROOT


def test_bench_train_reports_the_real_step(tiny_recipe, workdir, capsys):
    path = workdir / "bench.json"
    assert bench.main(["train", str(tiny_recipe()), "--steps=5", "--warmup=2", f"--json={path}", "--batch_size=4"]) == 0
    result = json.loads(path.read_text())
    assert result["tokens_per_iter"] == 4 * 32 and result["steps"] == 5
    assert result["ms_per_iter"] > 0
    assert result["tokens_per_sec"] == pytest.approx(result["tokens_per_iter"] / result["ms_per_iter"] * 1000, rel=1e-3)
    assert result["mfu"] is None and result["device"] == "cpu"  # a CPU has no entry in the peak table
    assert result["peak_memory_mb"] > 0 and result["params"] > 0
    assert "tokens_per_sec:" in capsys.readouterr().out


@pytest.mark.e2e
def test_bench_sample_times_exact_lengths(tiny_recipe, workdir, capsys):
    assert train.main([str(tiny_recipe()), "--max_iters=10", "--eval_interval=10", "--lr_decay_iters=10"]) == 0
    path = workdir / "sample.json"
    # 40 new tokens from a block_size-32 model: the cached phase and the sliding window both run
    assert bench.main(["sample", str(workdir / "out"), "--max_new_tokens=40", "--repeats=2", "--device=cpu",
                       f"--json={path}"]) == 0
    result = json.loads(path.read_text())
    assert result["hfgpt_tokens_per_sec"] > 0 and result["block_size"] == 32 and result["max_new_tokens"] == 40
    assert "ratio" not in result  # no --nanogpt, no comparison
    assert bench.main(["sample", str(workdir / "out"), f"--nanogpt={workdir}"]) == 2
    assert f"--nanogpt={workdir} has no model.py" in capsys.readouterr().err


@pytest.mark.e2e
def test_bench_finetune_measures_full_checkpointing_and_lora(workdir, capsys):
    tiny = ["--n_layer=2", "--n_embd=32", "--n_head=2", "--block_size=32", "--steps=1", "--warmup=1"]
    rows = {}
    for mode in ("checkpointing", "lora"):  # in this process: what each mode's child process runs
        assert bench.main(["finetune", *tiny, f"--one={mode}"]) == 0
        rows[mode] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # LoRA r=8 on c_attn (32 -> 96), attn.c_proj (32 -> 32), c_fc (32 -> 128), mlp.c_proj (128 -> 32), 2 blocks
    assert rows["lora"]["trainable_params"] == 2 * 8 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert rows["checkpointing"]["trainable_params"] == rows["checkpointing"]["params"]
    assert all(r["s_per_iter"] > 0 and r["peak_memory_mb"] > 0 for r in rows.values())
    path = workdir / "finetune.json"
    assert bench.main(["finetune", *tiny, "--modes=full", f"--json={path}"]) == 0
    result = json.loads(path.read_text())
    assert [r["mode"] for r in result["modes"]] == ["full"] and result["modes"][0]["peak_memory_mb"] > 0
    assert result["n_layer_n_embd_n_head"] == [2, 32, 2] and result["block_size"] == 32 and result["cpu"]


@pytest.mark.e2e
def test_bench_finetune_runs_the_same_model_with_transformers_trainer(workdir, capsys):
    """--trainer: hfgpt's step and Trainer's on the same SmolLM2-shaped model (shrunk), alternating;
    the same parameters train on both sides, and the JSON holds each side's tokens/s and memory."""
    tiny = ["--model=smollm2-135m", "--n_layer=2", "--n_embd=64", "--n_head=4", "--block_size=32", "--steps=2"]
    for mode in ("checkpointing", "lora"):
        rows = []
        for side in ("hfgpt", "trainer"):
            assert bench.main(["finetune", *tiny, f"--one={mode}", f"--side={side}"]) == 0
            rows.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
        assert rows[0]["trainable_params"] == rows[1]["trainable_params"] and rows[0]["params"] == rows[1]["params"]
        assert all(r["tokens_per_s"] > 0 and r["side"] == side for r, side in zip(rows, ("hfgpt", "trainer")))
    path = workdir / "vs.json"
    assert bench.main(["finetune", *tiny, "--modes=full", "--trainer", "--pairs=2", f"--json={path}"]) == 0
    result = json.loads(path.read_text())
    assert [(r["side"], r["first"]) for r in result["modes"]] == [("hfgpt", "hfgpt"), ("trainer", "hfgpt"),
                                                                 ("trainer", "trainer"), ("hfgpt", "trainer")]
    (summary,) = result["side_by_side"]
    assert summary["speed_ratio"] == round(summary["hfgpt"]["tokens_per_s"] / summary["trainer"]["tokens_per_s"], 3)
    assert result["n_layer_n_embd_n_head"] == [2, 64, 4]


def test_unknown_bench_mode(capsys):
    assert bench.main(["fly"]) == 2
    assert "unknown bench mode 'fly'" in capsys.readouterr().err


def test_bench_gpu_on_a_cpu_says_it_needs_cuda(capsys):
    assert bench.main(["gpu", f"--nanogpt={ROOT}"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: bench gpu needs a CUDA GPU")


FAKE_NANOGPT = {
    # nanoGPT's data/shakespeare_char/prepare.py, in short: sorted characters, uint16 ids, the last 10% for val
    "data/shakespeare_char/prepare.py": """
        import os, pickle
        import numpy as np
        here = os.path.dirname(__file__)
        data = open(os.path.join(here, "input.txt")).read()
        chars = sorted(set(data))
        stoi = {ch: i for i, ch in enumerate(chars)}
        n = len(data)
        for name, part in (("train", data[:int(n * 0.9)]), ("val", data[int(n * 0.9):])):
            np.array([stoi[c] for c in part], dtype=np.uint16).tofile(os.path.join(here, f"{name}.bin"))
        meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
        pickle.dump(meta, open(os.path.join(here, "meta.pkl"), "wb"))
    """,
    # a train.py that "trains" in no time: it saves the test's ckpt.pt, and the command line it was given
    "train.py": """
        import json, os, shutil, sys
        out = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--out_dir="))
        os.makedirs(out)
        shutil.copy(os.path.join(os.path.dirname(__file__), "untrained.ckpt"), os.path.join(out, "ckpt.pt"))
        json.dump(sys.argv[1:], open(os.path.join(out, "argv.json"), "w"))
    """,
    "config/train_shakespeare_char.py": "",
    "model.py": "",
}


@pytest.mark.e2e
def test_bench_race_against_a_fake_nanogpt(tiny_recipe, workdir, shakespeare_text):
    """The race's machinery in seconds: both sides' data prepared and checked, whole processes timed in
    alternating order, nanoGPT's checkpoint converted and both scored on the whole val split."""
    import statistics
    import textwrap

    import torch

    from hfgpt.bench.race import CONFIG, NANOGPT_CPU
    from hfgpt.model.nanogpt import nanogpt_checkpoint_from_hf

    clone = workdir / "nanoGPT"
    for name, text in FAKE_NANOGPT.items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text(textwrap.dedent(text))
    recipe = tiny_recipe(max_iters=20, eval_interval=20, lr_decay_iters=20, block_size=64)  # its text: 100k characters
    vocab = len(set(shakespeare_text[:100_000]))
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=vocab, n_positions=64, bos_token_id=0,
                                       eos_token_id=0))
    torch.save(nanogpt_checkpoint_from_hf(model), clone / "untrained.ckpt")
    assert bench.main(["race", str(recipe), f"--nanogpt={clone}", "--pairs=2", "--work_dir=race", "--json=race.json"]) == 0
    result = json.loads((workdir / "race.json").read_text())
    assert [p["first"] for p in result["pairs"]] == ["nanogpt", "hfgpt"]
    for p in result["pairs"]:
        assert p["hfgpt_s"] > 1 and p["nanogpt_s"] > 0 and p["ratio"] == round(p["hfgpt_s"] / p["nanogpt_s"], 3)
        assert p["hfgpt_cpu_s"] > 1 and p["nanogpt_cpu_s"] > 0  # hfgpt's: imports and training at least
        assert p["nanogpt_val_loss"] == pytest.approx(math.log(vocab), abs=0.1)  # an untrained model
        assert p["hfgpt_val_loss"] < p["nanogpt_val_loss"] - 0.5  # 20 iterations of training
    assert result["hfgpt_at_or_below_in_every_pair"] is True
    assert result["median_ratio"] == statistics.median(p["ratio"] for p in result["pairs"])
    argv = json.loads((workdir / "race" / "nanogpt-0" / "argv.json").read_text())
    assert argv == [CONFIG, *NANOGPT_CPU, f"--out_dir={workdir / 'race' / 'nanogpt-0'}"]
    assert not list(clone.rglob("*.bin"))  # the clone is only read: nanoGPT prepared and trained in a copy


def test_race_runs_the_command_of_the_cpu_recipes_header():
    """recipes/shakespeare_char_cpu.yaml's header is nanoGPT's CPU command that bench race runs."""
    from hfgpt.bench.race import CONFIG, NANOGPT_CPU

    header = [line.lstrip("# ").strip() for line in (ROOT / "recipes" / "shakespeare_char_cpu.yaml").read_text().splitlines()
              if line.startswith("#")]
    command = " ".join(header[1:4]).split()
    assert command == ["python", "train.py", CONFIG, *NANOGPT_CPU]


@pytest.mark.parametrize("args, message", [([], "bench race needs --nanogpt=DIR"),
                                           (["--nanogpt=."], "--nanogpt=. has no train.py: give the folder of a nanoGPT clone")])
def test_bench_race_needs_a_nanogpt_clone(tiny_recipe, capsys, args, message):
    assert bench.main(["race", str(tiny_recipe()), *args]) == 2
    assert message in capsys.readouterr().err


FAKE_NANOGPT_MODEL = """
    # nanoGPT's model.py interface (GPTConfig, GPT(config), forward(idx, targets) -> (logits, loss),
    # configure_optimizers(weight_decay, learning_rate, betas, device_type)) around a bigram model
    from dataclasses import dataclass
    import torch
    import torch.nn.functional as F

    @dataclass
    class GPTConfig:
        block_size: int = 1024
        vocab_size: int = 50304
        n_layer: int = 12
        n_head: int = 12
        n_embd: int = 768
        dropout: float = 0.0
        bias: bool = True

    class GPT(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.table = torch.nn.Embedding(config.vocab_size, config.vocab_size)

        def forward(self, idx, targets=None):
            logits = self.table(idx)
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

        def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
            return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
"""


def test_bench_train_against_nanogpts_step(tiny_recipe, workdir):
    """--nanogpt: alternating blocks of hfgpt's step and nanoGPT's (its model.py, imported from the
    clone), every pair and the median ratio, with the precision hfgpt's side ran in and the CPU."""
    import statistics
    import textwrap

    (workdir / "nanoGPT").mkdir()
    (workdir / "nanoGPT" / "model.py").write_text(textwrap.dedent(FAKE_NANOGPT_MODEL))
    recipe = tiny_recipe()
    assert bench.main(["train", str(recipe), "--nanogpt=nanoGPT", "--pairs=3", "--steps=2", "--warmup=1",
                       "--json=train.json"]) == 0
    result = json.loads((workdir / "train.json").read_text())
    assert [p["first"] for p in result["pairs"]] == ["hfgpt", "nanogpt", "hfgpt"]
    assert all(p["ratio"] == round(p["hfgpt_tokens_per_sec"] / p["nanogpt_tokens_per_sec"], 3) for p in result["pairs"])
    assert result["median_ratio"] == statistics.median(p["ratio"] for p in result["pairs"])
    assert result["mixed_precision"] == "no" and result["device"] == "cpu" and result["cpu"]


def test_bench_optim_counts_muons_ops_beside_torchs(workdir):
    path = workdir / "optim.json"
    assert bench.main(["optim", "--optimizer=muon", "--n_layer=3", "--n_head=2", "--n_embd=32", "--block_size=16",
                       "--vocab_size=100", "--device=cpu", "--steps=2", f"--json={path}"]) == 0
    result = json.loads(path.read_text())
    assert result["muon"]["ops_per_step"] < result["torch_muon"]["ops_per_step"] / 2  # 12 matrices of 4 shapes
    assert result["muon_vs_torch_max_abs_diff"] == 0.0 and result["adamw"]["ops_per_step"] <= 8  # fused
    assert result["muon"]["host_ms"] > 0 and result["shape"] == [3, 2, 32]


@pytest.mark.e2e
def test_bench_evaluation_times_the_loops_evaluation(tiny_recipe, workdir):
    """The loop's evaluate_and_save, timed phase by phase; the extras are what is left beyond the loss
    estimate and the checkpoint, and the run's folder is gone afterwards."""
    path = workdir / "eval.json"
    assert bench.main(["evaluation", str(tiny_recipe()), "--evaluations=1", "--loss_batches=2", "--eval_iters=8",
                       "--eval_samples=1", "--sample_max_new_tokens=10", f"--json={path}"]) == 0
    result = json.loads(path.read_text())
    assert len(result["evaluations"]) == 1 and result["loss_batches"] == 2 and result["eval_iters"] == 8
    assert result["loss_estimate_at_eval_iters_s"] == pytest.approx(4 * result["loss_estimate_s"], rel=0.01)
    parts = ("loss_estimate_s", "samples_s", "checkpoint_s", "cards_s", "row_and_plot_s")
    assert all(result[k] > 0 for k in parts) and "model_folder_s" not in result  # out_dir: the checkpoint's files
    assert result["evaluation_s"] >= sum(result[k] for k in parts) * 0.99
    for row in result["evaluations"]:
        assert row["extras_s"] == pytest.approx(sum(row.get(k, 0) for k in ("samples_s", "cards_s", "row_and_plot_s")))
        assert 0 <= row["other_s"] < 0.5 * row["evaluation_s"]
    assert result["card_sample_s"] > 0 and result["end_of_run_s"] > 0
    assert [p.name for p in workdir.iterdir() if p.name.startswith("hfgpt-bench")] == []
