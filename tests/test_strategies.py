"""What training does under each accelerate strategy, checked on the CPU: DeepSpeed's config filled
from the recipe before prepare (accelerate's own plugin objects, no deepspeed needed), one DeepSpeed
step per iteration with the loss scaled once and float32 weights saved (real DeepSpeed, when it is
installed), FSDP's float32 gradient reduction, block compilation and optimizer state in
safetensors (torch's FSDP2 on 2 processes), and the loss computed inside the prepared module
under DDP + torch.compile."""

import copy
import json
import subprocess
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from transformers import GPT2LMHeadModel

from hfgpt.config import ModelConfig, load_recipe
from hfgpt.core.errors import UserError
from hfgpt.model.gpt import NextTokenLoss, build_model, causal_lm, lm_loss, own_names
from hfgpt.training.run import prepare_training
from hfgpt.training.strategies import fill_deepspeed_config, reduce_in_float32
from tests.conftest import PYTHON, ROOT, free_port, run_env

TINY_GPT = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.0)
LAUNCHER_ENV = ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "ACCELERATE_GRADIENT_CLIPPING", "ACCELERATE_DEEPSPEED_CONFIG_FILE")


def deepspeed_accelerator(plugin, world=8):
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=world, gradient_accumulation_steps=1)


def launcher_environment(config_file: str) -> dict:
    """The ACCELERATE_* variables `accelerate launch --config_file config_file` gives the training processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(["--config_file", config_file, "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
    _, env = prepare_deepspeed_cmd_env(args)
    return {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}


@pytest.mark.e2e
def test_shipped_deepspeed_config_is_filled_from_the_recipe_before_prepare(monkeypatch):
    """The micro-batch is "auto" (prepare() would raise without a DataLoader), and so are the
    accumulation and clipping the shipped config leaves out: hfgpt fills all of them."""
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in launcher_environment(str(ROOT / "accelerate_configs" / "deepspeed.yaml")).items():
        monkeypatch.setenv(name, value)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 2 and plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == "auto"
    accelerator = deepspeed_accelerator(plugin)
    fill_deepspeed_config(accelerator, batch_size=12, accum=5, grad_clip=1.0)
    c = plugin.deepspeed_config
    filled = tuple(c[key] for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                                      "gradient_clipping"))
    assert filled == (12, 5, 12 * 5 * 8, 1.0)
    assert accelerator.gradient_accumulation_steps == 5  # accelerate's accumulation is the same number


def test_a_deepspeed_config_that_disagrees_is_refused(monkeypatch):
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    plugin = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=1, gradient_clipping=1.0)  # hfgpt 0.1's yaml
    with pytest.raises(UserError, match=r"gradient_accumulation_steps=1 \(recipe: 5\)"):
        fill_deepspeed_config(deepspeed_accelerator(plugin), batch_size=12, accum=5, grad_clip=1.0)


def test_a_deepspeed_json_with_auto_is_filled(tmp_path, monkeypatch):
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                "train_batch_size": "auto", "gradient_clipping": "auto", "zero_optimization": {"stage": 3}}))
    plugin = DeepSpeedPlugin(hf_ds_config=str(path))
    fill_deepspeed_config(deepspeed_accelerator(plugin, world=2), batch_size=4, accum=3, grad_clip=0.5)
    assert plugin.deepspeed_config["train_batch_size"] == 24 and plugin.deepspeed_config["gradient_clipping"] == 0.5


@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_reduces_gradients_in_float32(version):
    plugin = FullyShardedDataParallelPlugin(fsdp_version=version)
    plugin.set_mixed_precision("bf16")  # what AcceleratorState does for mixed_precision=bf16
    assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16  # accelerate's policy
    reduce_in_float32(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))
    policy = plugin.mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    plugin.validate_mixed_precision_policy()


@pytest.mark.e2e
@pytest.mark.parametrize("architecture, block, named", [("gpt2", "GPT2Block", None), ("llama", "LlamaDecoderLayer", None),
                                                         ("llama", "LlamaDecoderLayer", "GPT2Block")])
def test_fsdp_shards_by_the_models_own_blocks(architecture, block, named, monkeypatch, capsys):
    """The shipped fsdp.yaml as `accelerate launch` passes it, and one naming another family's block:
    accelerate's own wrap policy (on NextTokenLoss, the module prepare() gets) picks each transformer
    block of the model, whatever its family."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from accelerate.utils.launch import prepare_multi_gpu_env

    from hfgpt.training.strategies import set_wrap_unit

    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(
        ["--config_file", str(ROOT / "accelerate_configs" / "fsdp.yaml"), "train.py"]))
    for name, value in prepare_multi_gpu_env(args).items():
        if name.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(name, value)
    if named:
        monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", named)
    plugin = FullyShardedDataParallelPlugin()
    gpt = build_model(ModelConfig(architecture=architecture, n_layer=2, n_head=2, n_embd=32, block_size=16, bias=False),
                      vocab_size=65, eot_token_id=None)
    set_wrap_unit(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)), gpt)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, NextTokenLoss(gpt))
    units = [type(m).__name__ for m in NextTokenLoss(gpt).modules() if policy(m)]
    assert units == [block, block]
    assert (f"shards by {named}" in capsys.readouterr().out) is bool(named)


@pytest.mark.parametrize("strategy", [DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.FSDP,
                                      DistributedType.DEEPSPEED])
def test_what_is_compiled_under_each_strategy(strategy):
    """DDP and one device compile NextTokenLoss whole (the loss in the graph); FSDP and DeepSpeed
    compile each GPT2Block in place before prepare, so they shard a plain module tree."""
    recipe = load_recipe(None, {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "device": "cpu",
                                "compile": True})
    accelerator = SimpleNamespace(distributed_type=strategy, device=torch.device("cpu"), num_processes=1,
                                  state=SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=None),
                                  prepare=lambda *objects: objects, print=print)
    gpt = build_model(recipe.model, vocab_size=65, eot_token_id=None)
    model, _, compiled = prepare_training(recipe, accelerator, gpt, accum=1)
    blocks_compiled = [block._compiled_call_impl is not None for block in gpt.transformer.h]
    if strategy in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        assert type(model) is NextTokenLoss and blocks_compiled == [True, True]
        assert model.chunked  # the eager head: chunked, no float32 logits
    else:
        assert type(model._orig_mod) is NextTokenLoss and blocks_compiled == [False, False]
        assert not model._orig_mod.chunked  # compiled whole: inductor fuses the cast into the loss
    assert compiled and causal_lm(model) is gpt and gpt.config._attn_implementation == "hfgpt_sdpa"


def test_prepared_module_returns_the_loss_not_float32_logits():
    """Under mixed precision accelerate copies every low-precision output of the prepared module to
    float32: for the GPT itself that is the (B, T, vocab) logits; NextTokenLoss returns a scalar."""
    torch.manual_seed(0)
    gpt = build_model(TINY_GPT, vocab_size=1000, eot_token_id=None)
    wrapped = NextTokenLoss(copy.deepcopy(gpt))
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    gpt, wrapped = accelerator.prepare(gpt, wrapped)
    x, y = torch.randint(1000, (2, 16)), torch.randint(1000, (2, 16))
    assert gpt(input_ids=x, use_cache=False).logits.dtype == torch.float32  # a full float32 copy
    loss = wrapped(x, y)
    assert loss.shape == () and loss.dtype == torch.float32 and loss.item() == lm_loss(gpt, x, y).item()
    assert own_names(wrapped, accelerator.get_state_dict(wrapped)).keys() == gpt.state_dict().keys()


@pytest.mark.e2e
def test_ddp_around_the_compiled_loss_module(tmp_path):
    """DDP(torch.compile(NextTokenLoss)): the same loss and gradients as the plain GPT, the GPT's own
    weight names, and causal_lm() finds the GPT where accelerate's unwrap_model stops at the
    compiled wrapper (it strips torch.compile only when it is outermost)."""
    import torch.distributed as dist
    from accelerate.utils import extract_model_from_parallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        gpt = build_model(TINY_GPT, vocab_size=65, eot_token_id=None)
        reference = copy.deepcopy(gpt)
        ddp = torch.nn.parallel.DistributedDataParallel(torch.compile(NextTokenLoss(gpt), backend="eager"))
        x, y = torch.randint(65, (4, 16)), torch.randint(65, (4, 16))
        loss, expected = ddp(x, y), lm_loss(reference, x, y)
        loss.backward()
        expected.backward()
        assert loss.item() == expected.item()
        for a, b in zip(reference.parameters(), gpt.parameters()):
            assert torch.equal(a.grad, b.grad)
        assert type(extract_model_from_parallel(ddp, keep_torch_compile=False)).__name__ == "OptimizedModule"
        assert causal_lm(ddp) is gpt and type(causal_lm(ddp)) is GPT2LMHeadModel
        assert own_names(ddp, ddp.module.state_dict()).keys() == gpt.state_dict().keys()
    finally:
        dist.destroy_process_group()


def sharded_run(*args: str, launcher=(PYTHON,), env=None) -> dict:
    out = subprocess.run([*launcher, "-m", "tests.tools.sharded_run", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=900, env={**run_env(), "MASTER_PORT": str(free_port()), **(env or {})})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.split("RESULT ")[-1])


@pytest.mark.e2e
@pytest.mark.parametrize("architecture, tensors, first", [("gpt2", 28, "lm.transformer.h.0."),
                                                          ("llama", 20, "lm.model.embed_tokens.")])
def test_fsdp2_optimizer_state_round_trips_through_safetensors(tmp_path, architecture, tensors, first):
    """2 processes, FSDP2 with hfgpt's bf16 / float32-reduce policy, sharded by the model's blocks:
    the main process writes the gathered optimizer state as optimizer.safetensors + optimizer.json
    (no pickle); loaded back, every shard holds exactly what was saved."""
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    result = sharded_run("fsdp-optimizer", launcher=torchrun, env={"HFGPT_TEST_DIR": str(tmp_path),
                                                                   "HFGPT_TEST_ARCH": architecture})
    assert result["files"] == ["optimizer.json", "optimizer.safetensors"]
    assert result["equal"] and result["n"] == tensors and result["keys"][0].startswith(first)


@pytest.mark.e2e
@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_deepspeed_steps_once_per_iteration_and_scales_the_loss_once(architecture):
    """ZeRO-2, 4 micro-batches an iteration: 2 iterations are 2 DeepSpeed steps (hfgpt 0.1: 8), and
    the weights equal plain torch's bit for bit (with SGD, a loss divided twice would show)."""
    pytest.importorskip("deepspeed")
    result = sharded_run("deepspeed-steps", env={"HFGPT_TEST_ARCH": architecture})
    assert result == {"global_steps": 2, "max_weight_diff": 0.0, "gradient_accumulation_steps": 4}


@pytest.mark.e2e
@pytest.mark.parametrize("stage, architecture", [(2, "gpt2"), (3, "gpt2"), (3, "llama")])
def test_deepspeed_saves_float32_master_weights_and_no_pickle_of_its_own(stage, architecture):
    """bf16 under ZeRO-2 and 3: the saved weights are DeepSpeed's float32 masters under the GPT's
    names (accelerate's get_state_dict gives bf16 under ZeRO-2 and nothing under ZeRO-3); the
    checkpoint holds DeepSpeed's own files but not accelerate's random_states pickle; it restores."""
    pytest.importorskip("deepspeed")
    result = sharded_run("deepspeed-checkpoint", str(stage), env={"HFGPT_TEST_ARCH": architecture})
    assert result["dtypes"] == result["saved_dtypes"] == ["torch.float32"]
    assert result["equal_to_masters"] and result["names_are_the_models"]
    assert "model.safetensors" in result["files"] and "rng-0.safetensors" in result["files"]
    assert not any(name.endswith(".pkl") for name in result["files"])
    assert result["restored_iter"] == 2


def float32_tensors(step) -> list[tuple]:
    """Shapes of the float32 tensors that the ops of step() make (forward and backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Census(TorchDispatchMode):
        shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    self.shapes.append(tuple(t.shape))
            return out

    with Census() as census:
        step()
    return census.shapes


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_sharded_loss_never_makes_float32_logits(monkeypatch, family):
    """Under FSDP and DeepSpeed the head runs eagerly: NextTokenLoss(chunked=True) takes the output layer
    and the cross-entropy chunk by chunk, so no float32 (B, T, vocab) tensor is made, forward or
    backward (lm_loss makes several), and the loss and gradients are lm_loss's; for any causal LM
    whose logits are its head applied to its final hidden states."""
    from hfgpt.model import loss

    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 8 * 1000)  # 8 rows a chunk here: 8 chunks of 1000 logits
    gpt = build_model(TINY_GPT, vocab_size=1000, eot_token_id=None) if family == "gpt2" else tiny_llama()
    reference = copy.deepcopy(gpt)
    chunked = NextTokenLoss(gpt, chunked=True)
    assert chunked.chunked
    x, y = torch.randint(1000, (4, 16)), torch.randint(1000, (4, 16))
    losses = {}
    for name, module in (("chunked", chunked), ("plain", NextTokenLoss(reference))):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                losses[name] = module(x, y)
            losses[name].backward()

        big = [s for s in float32_tensors(step) if torch.Size(s).numel() >= 4 * 16 * 1000]
        assert bool(big) == (name == "plain"), big  # plain: (64, 1000) logits, log-softmax and its gradient
    assert losses["chunked"].item() == pytest.approx(losses["plain"].item(), abs=1e-4)
    for a, b in zip(gpt.parameters(), reference.parameters()):  # bf16 matmuls both: equal to bf16 rounding
        assert torch.allclose(a.grad, b.grad, rtol=2e-2, atol=1e-2 * b.grad.abs().max().item()), a.shape
    with torch.no_grad():  # evaluation: the loss alone, chunked too
        assert chunked(x, y).item() == pytest.approx(lm_loss(reference, x, y).item(), abs=1e-5)


def test_a_head_that_is_not_a_plain_linear_layer_keeps_lm_loss():
    """Gemma 2 soft-caps its logits (tanh): not head(hidden states), so the chunked loss is not taken."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           final_logit_softcapping=1.0))
    assert not NextTokenLoss(gemma, chunked=True).chunked
    assert NextTokenLoss(tiny_llama(), chunked=True).chunked


def test_fsdp2_with_the_chunked_loss_makes_no_float32_logits(tmp_path, monkeypatch):
    """The module prepare_training gives FSDP, sharded with fully_shard (bf16 compute, as hfgpt's policy)
    on a 1-process group: no float32 (B, T, vocab) tensor in a training step, and the loss of the
    unsharded model."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from hfgpt.model import loss

    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 8 * 1000)
    recipe = load_recipe(None, {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "device": "cpu",
                                "compile": False, "dropout": 0.0})
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, device=torch.device("cpu"), num_processes=1,
                                  state=SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=None),
                                  prepare=lambda *objects: objects, print=print)
    torch.manual_seed(0)
    gpt = build_model(recipe.model, vocab_size=1000, eot_token_id=None)
    reference = copy.deepcopy(gpt)
    model, optimizer, _ = prepare_training(recipe, accelerator, gpt, accum=1)
    assert type(model) is NextTokenLoss and model.chunked
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in gpt.transformer.h:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        x, y = torch.randint(1000, (4, 16)), torch.randint(1000, (4, 16))
        losses = []
        shapes = float32_tensors(lambda: losses.append(model(x, y)) or losses[0].backward())
        assert not [s for s in shapes if torch.Size(s).numel() >= 4 * 16 * 1000], shapes
        assert losses[0].item() == pytest.approx(lm_loss(reference, x, y).item(), abs=0.02)  # bf16 weights
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
@pytest.mark.parametrize("native_bf16, precision", [(True, "bf16"), (False, "fp16")])
def test_the_shipped_deepspeed_config_leaves_the_precision_to_the_recipe(monkeypatch, native_bf16, precision):
    """accelerate launch --config_file accelerate_configs/deepspeed.yaml: mixed_precision auto picks bf16
    on GPUs that compute it and fp16 on those that only emulate it (V100, T4), as without DeepSpeed."""
    from hfgpt.core.device import resolve_mixed_precision

    for name, value in launcher_environment(str(ROOT / "accelerate_configs" / "deepspeed.yaml")).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native_bf16)
    assert resolve_mixed_precision("auto", "cuda") == precision
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(precision)  # what Accelerator(mixed_precision=...) does with it
    assert plugin.deepspeed_config[precision]["enabled"] is True
