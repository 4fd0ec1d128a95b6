"""Which device trains, and with what precision: decided before Accelerate starts.

    device_type("auto")                    # 'cuda', 'mps' or 'cpu', as Accelerate will pick
    resolve_mixed_precision("auto", "cuda")  # 'bf16' on GPUs that support it, else 'fp16'
    resolve_mixed_precision("auto", "cpu")   # 'bf16' on CPUs with AMX, else 'no'
    should_compile(None, "mps")              # False: torch.compile by default on CUDA only
    states = rng_states()                    # the CPU generator and CUDA's or MPS's, as tensors
    with forked_rng(torch.device("mps")): ...  # those generators are restored on exit
    available_memory("cuda")                 # (bytes free on the GPU, "the GPU"); else RAM
"""

import os
from contextlib import contextmanager

import torch

from hfgpt.core.errors import UserError

TRUE = ("1", "true", "yes")


def device_type(requested: str) -> str:
    """The device Accelerate will use for `device: requested`, or a UserError if it is absent."""
    if requested == "cpu" or os.environ.get("ACCELERATE_USE_CPU", "").lower() in TRUE:
        return "cpu"
    cuda = torch.cuda.is_available()
    mps = mps_available()
    if requested == "cuda" and not cuda:
        raise UserError("device='cuda' but torch sees no CUDA GPU: set device: auto or cpu, or install a CUDA build of torch")
    if requested == "mps" and not mps:
        raise UserError("device='mps' but this machine has no Apple MPS device: set device: auto or cpu")
    if cuda and requested in ("auto", "cuda"):
        return "cuda"
    if mps:
        return "mps"
    return "cpu"


def resolve_mixed_precision(requested: str, dev: str) -> str:
    """'no', 'fp16' or 'bf16' for this device.

    auto: what `accelerate launch` was told (its config or --mixed_precision) when that is fp16 or
    bf16; otherwise bf16 on CUDA GPUs that compute it natively (compute capability 8.0+: A100,
    H100, L4, RTX 30xx and later), fp16 on older ones (V100, T4: torch "supports" bf16 there by
    emulation, with slow matmuls and no fused attention), bf16 on CPUs with AMX
    (Intel Xeon 4th generation and later: bf16 matmuls 3-4x faster than float32, training 1.4x
    faster at the same loss, see the README), and no precision change on other CPUs and on MPS
    (where fp16 or bf16 must be asked for: Accelerate then uses MPS's own loss scaler for fp16,
    not CUDA's, nanoGPT's issue #654). Write mixed_precision: no to force float32.
    """
    if requested == "auto":
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if launched in ("fp16", "bf16"):
            requested = launched
        elif dev == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        else:
            return "bf16" if dev == "cpu" and cpu_has_amx() else "no"
    if requested == "fp16" and dev == "cpu":
        raise UserError("mixed_precision='fp16' needs a GPU: on the CPU use bf16 or no")
    return requested


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units); without them bf16 is no faster than float32."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())


def should_compile(requested: bool | None, dev: str) -> bool:
    """torch.compile when asked; by default on CUDA only (on the CPU it gains a few percent after a
    long compile, and MPS support is partial)."""
    return requested if requested is not None else dev == "cuda"


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def rng_states() -> dict[str, torch.Tensor]:
    """Every torch generator this machine has: the CPU's, each CUDA GPU's, Apple MPS's."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    if mps_available():
        states["mps"] = torch.mps.get_rng_state()
    return states


def set_rng_states(states: dict[str, torch.Tensor]) -> None:
    """Restore what rng_states() returned (the generators this machine has)."""
    torch.set_rng_state(states["torch"])
    cuda = [states[k] for k in sorted(states) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if "mps" in states and mps_available():
        torch.mps.set_rng_state(states["mps"])


@contextmanager
def forked_rng(device: torch.device):
    """Inside, draw from the CPU generator and `device`'s (CUDA or MPS) freely: both are restored on exit."""
    if device.type in ("cuda", "mps"):
        with torch.random.fork_rng(devices=[device.index or 0], device_type=device.type):
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            yield


def available_memory(dev: str) -> tuple[int, str]:
    """Bytes a model can still take on the device, and where that is: the current CUDA GPU's free
    memory, else the machine's available RAM (CPU, and MPS's unified memory)."""
    if dev == "cuda":
        return torch.cuda.mem_get_info()[0], f"the GPU ({torch.cuda.get_device_name()})"
    import psutil  # installed with accelerate

    return psutil.virtual_memory().available, "this machine's RAM"
