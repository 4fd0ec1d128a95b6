"""Device and precision decisions and the devices' random generators, with CUDA and MPS faked (no GPU or
Mac here)."""

from types import SimpleNamespace

import time

import pytest
import torch

from hfgpt.core.device import (cpu_bf16_feature, device_type, forked_rng, resolve_mixed_precision, rng_states,
                               set_rng_states, should_compile)
from hfgpt.core.errors import UserError


@pytest.fixture
def machine(monkeypatch):
    """machine(cuda=..., mps=..., bf16=..., cpu={feature: True, ...}) fakes what torch sees: `cpu` is
    what torch.cpu.get_capabilities() answers (x86_64 without bf16 instructions unless given)."""

    def fake(cuda=False, mps=False, bf16=True, cpu=None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        features = {"architecture": "x86_64", "avx2": True, **(cpu or {})}
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: features)
        monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)

    return fake


@pytest.mark.parametrize("cuda, mps, requested, expected", [
    (True, False, "auto", "cuda"), (False, True, "auto", "mps"), (False, False, "auto", "cpu"),
    (True, False, "cpu", "cpu"), (False, True, "cpu", "cpu"), (False, True, "mps", "mps"), (True, False, "cuda", "cuda"),
])
def test_device_type(machine, cuda, mps, requested, expected):
    machine(cuda=cuda, mps=mps)
    assert device_type(requested) == expected


@pytest.mark.parametrize("requested, message", [("cuda", "no CUDA GPU"), ("mps", "no Apple MPS device")])
def test_missing_device_is_a_user_error(machine, requested, message):
    machine()
    with pytest.raises(UserError, match=message):
        device_type(requested)


def test_accelerate_launch_cpu_flag_wins(machine, monkeypatch):
    machine(cuda=True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert device_type("auto") == "cpu"


@pytest.mark.parametrize("dev, bf16, requested, expected", [
    ("cuda", True, "auto", "bf16"), ("cuda", False, "auto", "fp16"), ("cpu", False, "auto", "no"),
    ("cpu", True, "auto", "bf16"), ("cpu", True, "no", "no"),
    ("mps", True, "auto", "no"), ("mps", True, "fp16", "fp16"), ("mps", True, "bf16", "bf16"),
    ("cuda", True, "no", "no"), ("cpu", False, "bf16", "bf16"),
])
def test_mixed_precision(machine, dev, bf16, requested, expected):
    """bf16: CUDA's bf16 support, or (here) AMX on the CPU."""
    machine(cuda=dev == "cuda", mps=dev == "mps", bf16=bf16, cpu={"amx_tile": bf16, "amx_bf16": bf16})
    assert resolve_mixed_precision(requested, dev) == expected


@pytest.mark.parametrize("features, expected", [
    ({"amx_tile": True, "amx_bf16": True, "avx512_bf16": True}, "amx_bf16"),  # Xeon Sapphire Rapids and later
    ({"avx512_f": True, "avx512_bf16": True}, "avx512_bf16"),  # AMD Zen 4/5 (this project's EPYC), Cooper Lake
    ({"avx512_f": True, "avx512_vnni": True}, None),  # Skylake to Ice Lake, Zen 2/3: bf16 would be emulated
    ({}, None),  # AVX2 only
    ({"architecture": "aarch64", "bf16": True, "sve": True, "sve_bf16": True}, "arm bf16+sve"),  # Graviton 3/4, Grace
    ({"architecture": "arm64", "bf16": True, "i8mm": True}, None),  # Apple M2+: bf16 but no SVE
    ({"architecture": "aarch64", "neon": True}, None),  # Graviton 2: no bf16
])
def test_auto_precision_on_the_cpu_follows_its_bf16_instructions(machine, features, expected):
    machine(cpu=features)
    assert cpu_bf16_feature() == expected
    assert resolve_mixed_precision("auto", "cpu") == ("bf16" if expected else "no")
    assert resolve_mixed_precision("no", "cpu") == "no"



def test_accelerate_config_precision_is_taken_by_auto(machine, monkeypatch):
    machine(cuda=True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolve_mixed_precision("auto", "cuda") == "fp16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate's default: auto still picks bf16
    assert resolve_mixed_precision("auto", "cuda") == "bf16"


def test_fp16_on_cpu_is_refused(machine):
    machine()
    with pytest.raises(UserError, match="fp16"):
        resolve_mixed_precision("fp16", "cpu")


@pytest.mark.parametrize("requested, dev, expected", [
    (None, "cuda", True), (None, "cpu", False), (None, "mps", False), (True, "cpu", True), (False, "cuda", False),
])
def test_compile_default(requested, dev, expected):
    assert should_compile(requested, dev) is expected


@pytest.mark.parametrize("path", ["accelerate_config.yaml", "accelerate_configs/multi_gpu.yaml",
                                  "accelerate_configs/fsdp.yaml", "accelerate_configs/deepspeed.yaml"])
def test_shipped_accelerate_configs_load(path):
    """accelerate's own loader accepts each config and reads the keys hfgpt documents."""
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(Path(__file__).parent.parent / path))
    expected = {"accelerate_config.yaml": "NO", "accelerate_configs/multi_gpu.yaml": "MULTI_GPU",
                "accelerate_configs/fsdp.yaml": "FSDP", "accelerate_configs/deepspeed.yaml": "DEEPSPEED"}[path]
    assert config.distributed_type.value == expected
    if expected == "FSDP":
        # no block class named: hfgpt shards by the model's own (test_strategies.py::test_fsdp_shards_by_the_models_own_blocks)
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert "fsdp_transformer_layer_cls_to_wrap" not in config.fsdp_config
    if expected == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 2


@pytest.mark.parametrize("major, expected", [(7, "fp16"), (8, "bf16"), (9, "bf16")])
def test_auto_precision_ignores_emulated_bf16(monkeypatch, major, expected):
    """A V100 or T4 (compute capability 7.x) "supports" bf16 by emulation, as torch's default
    is_bf16_supported() says: slow matmuls, no fused attention. auto picks fp16 there."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(major=major, minor=0))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)  # what a V100 answers
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert torch.cuda.is_bf16_supported() is True  # the trap
    assert resolve_mixed_precision("auto", "cuda") == expected


class FakeMPS:
    """torch.mps's generator functions, for a machine without Apple's GPU."""

    def __init__(self):
        self.state = torch.tensor([1, 2, 3], dtype=torch.uint8)

    def get_rng_state(self, device="mps"):
        return self.state.clone()

    def set_rng_state(self, state, device="mps"):
        self.state = state.clone()


def test_mps_generator_is_saved_restored_and_forked(monkeypatch):
    mps = FakeMPS()
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", mps.get_rng_state)
    monkeypatch.setattr(torch.mps, "set_rng_state", mps.set_rng_state)
    saved = rng_states()  # what each checkpoint's rng-<rank>.safetensors holds
    assert torch.equal(saved["mps"], torch.tensor([1, 2, 3], dtype=torch.uint8))
    mps.state = torch.tensor([9], dtype=torch.uint8)
    set_rng_states(saved)  # a resume
    assert torch.equal(mps.state, torch.tensor([1, 2, 3], dtype=torch.uint8))
    with forked_rng(torch.device("mps")):  # sampling at an evaluation draws from it
        mps.state = torch.tensor([7], dtype=torch.uint8)
    assert torch.equal(mps.state, torch.tensor([1, 2, 3], dtype=torch.uint8))


def test_without_mps_only_the_cpu_generator(machine):
    machine()
    saved = rng_states()
    assert set(saved) == {"torch"}
    with forked_rng(torch.device("cpu")):
        torch.rand(3)
    assert torch.equal(torch.get_rng_state(), saved["torch"])


@pytest.mark.parametrize("requested, env, busy, expected", [
    (None, {}, 0.0, 2), (None, {}, 0.2, 2), (None, {}, 0.4, 1), (None, {}, 1.9, 1), (None, {}, 3.0, 1),
    (None, {"OMP_NUM_THREADS": "3"}, 1.9, 3), (None, {"MKL_NUM_THREADS": "2"}, 1.9, 2), (4, {"OMP_NUM_THREADS": "1"}, 0.0, 4),
])
def test_cpu_threads_fit_the_cores_free_now_unless_fixed(requested, env, busy, expected, monkeypatch):
    """2 usable cores: the busy ones (other work, as /proc/stat shows it) are left to it, a core
    more than a quarter busy counts as taken; the recipe's threads, then OMP_NUM_THREADS or
    MKL_NUM_THREADS, decide when given."""
    from hfgpt.core import device

    for name in device.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(device, "usable_cpus", lambda: 2)
    threads, why = device.cpu_threads(requested, busy=busy)
    assert threads == expected and why


def test_busy_cores_sees_other_work(monkeypatch):
    """A process spinning on one core while busy_cores watches: at least half a core busy."""
    import multiprocessing
    import sys

    from hfgpt.core.device import busy_cores

    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/stat is Linux's")
    quiet = busy_cores(0.3)
    spinner = multiprocessing.get_context("fork").Process(target=_spin, daemon=True)
    spinner.start()
    try:
        time.sleep(0.2)
        loaded = busy_cores(0.5)
    finally:
        spinner.terminate()
    assert loaded >= 0.5 and loaded > quiet - 0.5


def _spin():
    while True:
        pass
