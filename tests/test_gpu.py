"""On a CUDA GPU: `python -m pytest -m gpu tests/test_gpu.py` (every test here is skipped without one;
scripts/gpu_check.sh runs these first, then the GPU bench).

What a CPU cannot show: the precision auto picks and this GPU's MFU peak, the attention kernel a
compiled bf16 training step really runs (flash or cuDNN, never the memory-efficient or math one on
sm80+), the pinned single-copy batch, fp16 with the loss scaler (and its skipped steps counted),
hfgpt's batched Muon against torch's on CUDA's kernels, and a resume that is exact enough
(CUDA's atomic adds in the embedding backward make it not bitwise) with float32 weights saved.
"""

import subprocess

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import PYTHON, run_env
from tests.helpers import read_metrics

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def capability() -> int:
    return torch.cuda.get_device_properties(0).major


def gpu_run(precision: str, n_embd: int = 768, n_head: int = 12, vocab: int = 50257, block_size: int = 256):
    """hfgpt's training run on the GPU, prepared as python -m hfgpt.train prepares it, over random tokens."""
    from accelerate.state import AcceleratorState

    from hfgpt.config import load_recipe
    from hfgpt.data.batches import Batches
    from hfgpt.model.gpt import build_model
    from hfgpt.training.run import Run, make_accelerator, prepare_training

    recipe = load_recipe(None, {"n_layer": 2, "n_head": n_head, "n_embd": n_embd, "block_size": block_size,
                                "batch_size": 8, "gradient_accumulation_steps": 1, "dropout": 0.0, "device": "cuda",
                                "mixed_precision": precision, "learning_rate": 1e-3})
    AcceleratorState._reset_state(reset_partial_state=True)
    torch._dynamo.reset()
    accelerator = make_accelerator(recipe)
    torch.manual_seed(0)
    gpt = build_model(recipe.model, vocab_size=vocab, eot_token_id=None)
    model, optimizer, compiled = prepare_training(recipe, accelerator, gpt, accum=1)
    tokens = np.tile(np.arange(vocab, dtype=np.uint16), 100_000 // vocab + 2)  # a learnable sequence
    batches = Batches(tokens, block_size, 8, seed=0)
    return recipe, Run(accelerator, {}, None, None, None, model, optimizer, batches, accum=1,
                       tokens_per_iter=8 * block_size, compiled=compiled, flops_per_token=0.0, peak_flops=None)


def test_auto_precision_and_a_known_mfu_peak():
    from hfgpt.core.device import resolve_mixed_precision
    from hfgpt.training.mfu import peak_flops

    precision = resolve_mixed_precision("auto", "cuda")
    assert precision == ("bf16" if capability() >= 8 else "fp16")
    assert peak_flops("cuda", precision) is not None, f"add {torch.cuda.get_device_name()!r} to hfgpt/training/mfu.py"


def test_compiled_training_step_runs_fused_attention():
    """Row 1 on the device, by kernel name: flash (or cuDNN's fused attention) on sm80+, the
    memory-efficient kernel before that (flash needs sm80); never the math fallback."""
    from hfgpt.bench.gpu import attention_kernels
    from hfgpt.core.device import resolve_mixed_precision
    from hfgpt.training.run import stepper

    recipe, run = gpu_run(resolve_mixed_precision("auto", "cuda"))
    assert run.compiled
    step = stepper(run, recipe.optim.grad_clip)
    for _ in range(3):
        step().item()
    kinds = attention_kernels(step)
    if capability() >= 8:
        assert ("flash" in kinds or "cudnn" in kinds) and "memory-efficient" not in kinds and "math" not in kinds, kinds
    else:
        assert "memory-efficient" in kinds and "math" not in kinds, kinds


def test_the_window_is_pinned_and_copied_once():
    from hfgpt.data.batches import to_device

    window = torch.randint(100, (12, 1025))
    x, y = to_device(window, torch.device("cuda"))
    torch.cuda.synchronize()
    assert x.is_cuda and torch.equal(x.cpu(), window[:, :-1]) and torch.equal(y.cpu(), window[:, 1:])
    assert y.data_ptr() - x.data_ptr() == 8  # views of one device buffer


def test_fp16_with_the_loss_scaler_trains():
    from hfgpt.training.run import train_step

    recipe, run = gpu_run("fp16", n_embd=128, n_head=4, vocab=128, block_size=64)
    assert run.accelerator.scaler is not None
    window, losses = run.batches.next_window(), []
    for _ in range(60):
        loss, window = train_step(run, window, recipe.optim.grad_clip)
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 1, losses[::10]
    assert 1 <= run.accelerator.scaler.get_scale() < 2**24
    assert 0 <= run.skipped_steps() < 30  # counted on the device, fused AdamW or not


def test_batched_muon_agrees_with_torchs_muon_on_cuda():
    """On CUDA batched and single matmuls may take different cuBLAS kernels: equal to bf16 rounding."""
    from hfgpt.training.optim import BatchedMuon
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_head=4, n_embd=256, vocab_size=128, n_positions=64)).cuda()
    mine = [p for block in model.transformer.h for p in block.parameters() if p.dim() == 2]
    theirs = [p.detach().clone() for p in mine]
    settings = {"lr": 0.02, "momentum": 0.95, "weight_decay": 0.0, "adjust_lr_fn": "match_rms_adamw"}
    a, b = BatchedMuon(mine, **settings), torch.optim.Muon(theirs, **settings)
    for _ in range(5):
        for p, q in zip(mine, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    worst = max(((p - q).abs().max() / q.abs().max()).item() for p, q in zip(mine, theirs))
    assert worst < 1e-2, worst


@pytest.mark.e2e
def test_resume_is_exact_enough_and_saves_float32(tmp_path, shakespeare_text):
    """python -m hfgpt.train on the GPU with its defaults (compile, auto precision), dropout on:
    60 iterations straight, and 30 + resume to 60."""
    (tmp_path / "t.txt").write_text(shakespeare_text[:100_000])
    recipe = dict(dataset="tiny", tokenizer="char", source=str(tmp_path / "t.txt"), n_layer=2, n_head=2, n_embd=64,
                  block_size=64, batch_size=16, gradient_accumulation_steps=2, max_iters=60, eval_interval=30,
                  eval_iters=10, log_interval=10, learning_rate=3e-3, warmup_iters=5, lr_decay_iters=60, min_lr=3e-4,
                  dropout=0.1, device="cuda", always_save_checkpoint=True, eval_samples=1, sample_max_new_tokens=20)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    for args in (["--out_dir=full"], ["--out_dir=split", "--max_iters=30"], ["--out_dir=split", "--init_from=resume"]):
        out = subprocess.run([PYTHON, "-m", "hfgpt.train", "r.yaml", *args], cwd=tmp_path, capture_output=True,
                             text=True, timeout=900, env=run_env())
        assert out.returncode == 0, out.stderr[-3000:]
    val = {d: [r["val_loss"] for r in read_metrics(tmp_path / d) if "val_loss" in r] for d in ("full", "split")}
    assert len(val["full"]) == len(val["split"]) == 3
    assert abs(val["full"][-1] - val["split"][-1]) < 1e-2, val
    weights = load_file(tmp_path / "split" / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float32}
