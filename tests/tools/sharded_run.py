"""DeepSpeed and FSDP2 on the CPU, run by tests/test_strategies.py in a subprocess; prints one JSON line.

    python -m tests.tools.sharded_run deepspeed-steps           # needs deepspeed; ZeRO-2, one process
    python -m tests.tools.sharded_run deepspeed-checkpoint 3    # ZeRO-2 or 3, bf16: weights saved, no pickle of ours
    torchrun --nproc_per_node 2 -m tests.tools.sharded_run fsdp-optimizer

DeepSpeed runs on its CPU accelerator with gloo: the environment is what `accelerate launch` with
accelerate_configs/deepspeed.yaml sets, and Accelerator() is built without cpu=True (which would
turn DeepSpeed off). accelerate runs FSDP on GPUs only, so FSDP2 is torch's fully_shard on a
2-process gloo group, and hfgpt's checkpoint functions get an accelerator that says FSDP.
"""

import copy
import json
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from hfgpt.config import load_recipe
from hfgpt.data.batches import Batches
from hfgpt.model.families import transformer_blocks
from hfgpt.model.gpt import build_model, lm_loss

TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "batch_size": 4, "dropout": 0.0, "device": "cpu",
        "compile": False, "out_dir": "out",
        # HFGPT_TEST_ARCH=llama: the same runs with a Llama block (no biases, as Llama's)
        **({"architecture": "llama", "bias": False} if os.environ.get("HFGPT_TEST_ARCH") == "llama" else {})}
VOCAB = 65


def deepspeed_environment(stage: int) -> None:
    """What `accelerate launch` sets for one DeepSpeed process (the test picks MASTER_PORT)."""
    os.environ.setdefault("MASTER_PORT", "29731")
    os.environ.update({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage),
                       "MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                       "LOCAL_WORLD_SIZE": "1"})


def windows(n: int, seed: int = 0) -> list[torch.Tensor]:
    tokens = np.random.default_rng(seed).integers(0, VOCAB, size=10_000, dtype=np.uint16)
    batches = Batches(tokens, TINY["block_size"], TINY["batch_size"], seed=seed)
    return [batches.next_window() for _ in range(n)]


def deepspeed_steps() -> dict:
    """hfgpt's train_step under DeepSpeed ZeRO-2, 4 micro-batches an iteration, 2 iterations, SGD
    without clipping (an update is lr x gradient, so a loss scaled twice shows in the weights),
    against plain torch: engine steps, and the weights' largest difference."""
    deepspeed_environment(2)
    from accelerate import Accelerator

    from hfgpt.model.gpt import NextTokenLoss
    from hfgpt.training.run import train_step
    from hfgpt.training.strategies import fill_deepspeed_config

    accum, lr = 4, 0.5
    recipe = load_recipe(None, TINY)
    torch.manual_seed(0)
    gpt = build_model(recipe.model, VOCAB, eot_token_id=None)
    reference = copy.deepcopy(gpt)
    data = windows(2 * accum + 1)
    sgd = torch.optim.SGD(reference.parameters(), lr=lr)
    for it in range(2):
        for w in data[it * accum:(it + 1) * accum]:
            (lm_loss(reference, w[:, :-1], w[:, 1:]) / accum).backward()
        sgd.step()
        sgd.zero_grad()

    accelerator = Accelerator()
    fill_deepspeed_config(accelerator, recipe.train.batch_size, accum, grad_clip=0.0)
    model, optimizer = accelerator.prepare(NextTokenLoss(gpt), torch.optim.SGD(gpt.parameters(), lr=lr))
    feed = iter(data)
    run = SimpleNamespace(accelerator=accelerator, model=model, optimizer=optimizer, accum=accum,
                          batches=SimpleNamespace(next_window=lambda: next(feed)))
    window = run.batches.next_window()
    for _ in range(2):
        _, window = train_step(run, window, grad_clip=0.0)
    engine = accelerator.deepspeed_engine_wrapped.engine
    trained = dict(engine.module.lm.named_parameters())
    diff = max((trained[n].detach() - p.detach()).abs().max().item() for n, p in reference.named_parameters())
    return {"global_steps": engine.global_steps, "max_weight_diff": diff,
            "gradient_accumulation_steps": engine.gradient_accumulation_steps()}


def deepspeed_checkpoint(stage: int) -> dict:
    """ZeRO-`stage`, bf16: the weights hfgpt saves (dtypes, equal to DeepSpeed's float32 masters), the
    files of a checkpoint (no random_states pickle), and a restore of it."""
    deepspeed_environment(stage)
    from accelerate import Accelerator
    from deepspeed.utils import safe_get_full_fp32_param

    from hfgpt.data.tokenizer import char_tokenizer
    from hfgpt.training.checkpoint import save_checkpoint
    from hfgpt.training.resume import restore
    from hfgpt.training.run import prepare_training, train_step
    from hfgpt.training.strategies import model_state_dict
    from hfgpt.training.state import LoopState

    folder = Path(tempfile.mkdtemp(prefix="hfgpt-deepspeed-"))
    recipe = load_recipe(None, {**TINY, "mixed_precision": "bf16", "out_dir": str(folder)})
    accelerator = Accelerator(mixed_precision="bf16")
    torch.manual_seed(0)
    gpt = build_model(recipe.model, VOCAB, eot_token_id=None)
    names = set(gpt.state_dict())
    model, optimizer, _ = prepare_training(recipe, accelerator, gpt, accum=1)
    feed = iter(windows(3))
    run = SimpleNamespace(accelerator=accelerator, model=model, optimizer=optimizer, accum=1,
                          batches=SimpleNamespace(next_window=lambda: next(feed)))
    window = run.batches.next_window()
    for _ in range(2):
        _, window = train_step(run, window, recipe.optim.grad_clip)
    engine = accelerator.deepspeed_engine_wrapped.engine
    masters = {n: safe_get_full_fp32_param(p) for n, p in engine.module.lm.named_parameters()}
    saved = model_state_dict(accelerator, model)
    batches = Batches(np.arange(1000, dtype=np.uint16) % VOCAB, 16, 4, seed=0)
    tokenizer = char_tokenizer("abc")
    final = save_checkpoint(accelerator, model, optimizer, batches, tokenizer, recipe, LoopState(iter=2))
    files = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
    from safetensors.torch import load_file
    on_disk = load_file(final / "model.safetensors")
    state = restore(accelerator, model, optimizer, batches, final)
    return {"dtypes": sorted({str(v.dtype) for v in saved.values()}),
            "equal_to_masters": all(torch.equal(saved[n], masters[n]) for n in masters),
            "names_are_the_models": set(saved) <= names and set(masters) <= set(saved),
            "saved_dtypes": sorted({str(v.dtype) for v in on_disk.values()}), "files": files,
            "restored_iter": state.iter, "engine_global_steps": engine.global_steps}


def fsdp_optimizer() -> dict:
    """FSDP2 over 2 processes (bf16 compute, float32 gradient reduction, as hfgpt's policy): the
    optimizer's sharded state gathered into optimizer.safetensors + .json by the main process, then
    loaded into a fresh optimizer and scattered back to the shards."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from accelerate.utils import DistributedType

    from hfgpt.model.gpt import NextTokenLoss
    from hfgpt.core.tensor_tree import load_tree, save_tree
    from hfgpt.training.strategies import load_optimizer_state, optimizer_state

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    recipe = load_recipe(None, TINY)
    torch.manual_seed(0)
    model = NextTokenLoss(build_model(recipe.model, VOCAB, eot_token_id=None))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in transformer_blocks(model.lm):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, is_main_process=rank == 0)

    def trained_optimizer(steps: int):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for w in windows(steps, seed=rank)[:steps]:
            model(w[:, :-1], w[:, 1:]).backward()
            optimizer.step()
            optimizer.zero_grad()
        return optimizer

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    optimizer = trained_optimizer(2)
    folder = Path(os.environ.get("HFGPT_TEST_DIR", tempfile.gettempdir()))
    state = optimizer_state(accelerator, model, optimizer)
    if rank == 0:
        save_tree(state, folder, "optimizer")
    dist.barrier()
    fresh = trained_optimizer(1)  # a different state, overwritten by the load
    load_optimizer_state(accelerator, model, fresh, lambda: load_tree(folder, "optimizer"))
    before, after = state, get_optimizer_state_dict(model, fresh, options=full)
    result = {}
    if rank == 0:
        keys = sorted(before["state"])
        result = {"keys": keys[:2], "n": len(keys), "equal": all(
            torch.equal(before["state"][k][s], after["state"][k][s]) for k in keys for s in ("exp_avg", "exp_avg_sq", "step")),
            "files": sorted(p.name for p in folder.iterdir())}
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "deepspeed-steps":
        out = deepspeed_steps()
    elif mode == "deepspeed-checkpoint":
        out = deepspeed_checkpoint(int(sys.argv[2]))
    else:
        out = fsdp_optimizer()
    if out:
        print("RESULT " + json.dumps(out))
