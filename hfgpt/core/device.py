"""Which device trains, and with what precision: decided before Accelerate starts.

    device_type("auto")                    # 'cuda', 'mps' or 'cpu', as Accelerate will pick
    resolve_mixed_precision("auto", "cuda")  # 'bf16' on GPUs that support it, else 'fp16'
    resolve_mixed_precision("auto", "cpu")   # 'bf16' on CPUs that multiply bf16 natively, else 'no'
    cpu_bf16_feature()                       # 'avx512_bf16', 'amx_bf16', 'arm bf16+sve' or None: why
    should_compile(None, "mps")              # False: torch.compile by default on CUDA only
    states = rng_states()                    # the CPU generator and CUDA's or MPS's, as tensors
    with forked_rng(torch.device("mps")): ...  # those generators are restored on exit
    available_memory("cuda")                 # (bytes free on the GPU, "the GPU"); else RAM
    threads, why = cpu_threads(None)         # CPU training: the cores free now (or what the user fixed)
"""

import os
import time
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
    emulation, with slow matmuls and no fused attention), bf16 on CPUs that multiply bf16 natively
    (cpu_bf16_feature), and no precision change on other CPUs and on MPS (where fp16 or bf16 must
    be asked for: Accelerate then uses MPS's own loss scaler for fp16, not CUDA's, nanoGPT's issue
    #654). Write mixed_precision: no to force float32.
    """
    if requested == "auto":
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if launched in ("fp16", "bf16"):
            requested = launched
        elif dev == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        else:
            return "bf16" if dev == "cpu" and cpu_bf16_feature() else "no"
    if requested == "fp16" and dev == "cpu":
        raise UserError("mixed_precision='fp16' needs a GPU: on the CPU use bf16 or no")
    return requested


def cpu_bf16_feature() -> str | None:
    """The feature that makes bf16 matmuls faster than float32 ones on this CPU, or None.

    A pure function of the features torch detects (no timing at start-up, so a recipe trains the
    same numbers on the same machine every time):
      amx_bf16     Intel Xeon 4th generation (Sapphire Rapids) and later: bf16 tiles, matmuls 3-4x
                   float32's; the CPU recipe trains 1.4x faster (measured, docs/benchmarks.md).
      avx512_bf16  AMD Zen 4 / Zen 5 (EPYC 9004/9005, Ryzen 7000+), Intel Cooper Lake: VDPBF16PS,
                   twice float32's multiply rate at half the bytes; measured on an AMD EPYC:
                   the CPU recipe about 1.35x float32's tokens/s, same whole-val loss (docs/speed.md).
      arm bf16+sve Neoverse V1/V2/N2 (AWS Graviton 3/4, NVIDIA Grace): BFMMLA through oneDNN/ACL,
                   about twice float32's GEMM rate (reasoned from the ISA, not measured here).
    None elsewhere: AVX2 only, AVX-512 without BF16 (Skylake to Ice Lake, Zen 2/3), where oneDNN
    emulates bf16 with conversions around float32 arithmetic; Apple's M chips (bf16 but no SVE,
    and no oneDNN bf16 GEMM in torch's macOS builds: reasoned, not measured; MPS is their device
    anyway); Graviton 2 and other ARM CPUs without bf16. torch's own
    torch.ops.mkldnn._is_mkldnn_bf16_supported() is True on any AVX-512 CPU: it says bf16 runs,
    not that it is fast, so it is not the test.
    """
    caps = cpu_capabilities()
    if caps.get("amx_bf16"):
        return "amx_bf16"
    if caps.get("avx512_bf16"):
        return "avx512_bf16"
    if caps.get("architecture") in ("aarch64", "arm64") and caps.get("bf16") and caps.get("sve"):
        return "arm bf16+sve"
    return None


def cpu_capabilities() -> dict:
    """The CPU features torch detects (torch.cpu.get_capabilities; a torch without it: its two older
    x86 checks)."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return dict(get())
    return {key: bool(getattr(torch.cpu, check, lambda: False)())
            for key, check in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))}


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


# --- CPU threads ---------------------------------------------------------------------------------

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # what torch's intra-op pool reads at start
BUSY_SAMPLE_S = 0.25  # how long the machine's other work is watched before choosing


def usable_cpus() -> int:
    """The cores this process may run on (os.sched_getaffinity is Linux-only)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(busy, all) jiffies of every CPU since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def busy_cores(seconds: float = BUSY_SAMPLE_S) -> float | None:
    """How many cores other work keeps busy now: /proc/stat over `seconds` while this process
    sleeps, minus this process's own CPU time; None where /proc/stat does not exist (macOS)."""
    before, mine = _cpu_times(), time.process_time()
    if before is None:
        return None
    time.sleep(seconds)
    after, mine = _cpu_times(), time.process_time() - mine
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return 0.0
    cores = os.cpu_count() or 1
    return max(0.0, busy / total * cores - mine / seconds)


def cpu_threads(requested: int | None, busy: float | None = None) -> tuple[int, str]:
    """Threads for CPU training, and why: `requested` (the recipe's threads); else OMP_NUM_THREADS
    or MKL_NUM_THREADS when set (torch read it at start); else the cores this process may use,
    less those other work keeps busy now (busy_cores), at least one. On a machine whose cores are
    taken by other work, one OpenMP thread per core makes every step wait for the slowest thread
    (measured here: 1,384-1,417 ms/iter against 62-70 with one thread, load 1.7-2.8 on 2 cores)."""
    usable = usable_cpus()
    if requested is not None:
        return requested, "the recipe's threads"
    for name in THREAD_VARIABLES:
        if os.environ.get(name, "").strip().isdigit():
            return max(1, int(os.environ[name])), f"{name}={os.environ[name]}"
    busy = busy_cores() if busy is None else busy
    if busy is None:
        return usable, f"the {usable} cores this process may use"
    free = max(1, min(usable, int(usable - busy + 0.25)))  # a core that is three quarters busy is not free
    return free, f"the cores free now: {usable}, {busy:.1f} of them busy with other work; set threads to choose"
