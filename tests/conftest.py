"""Shared fixtures: an offline Hugging Face environment, the shared text and GPT-2 files, tiny recipes.

Tests never touch the network: the Hub is switched off before any HF library is imported, and
HF_HOME points to a fresh folder, so only what a test puts in the cache is there.
"""

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="hfgpt-tests-hf-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HOME": _HOME,
    "TOKENIZERS_PARALLELISM": "false",
    # Tiny test models gain nothing from more threads, and on a busy machine OpenMP's spinning
    # threads make every step up to 10x slower: one thread per process (subprocesses inherit it).
    "OMP_NUM_THREADS": "1",
})
os.environ.pop("HF_TOKEN", None)

import pytest  # noqa: E402
import yaml  # noqa: E402

from tests.tools.local_server import LocalServer  # noqa: E402,F401  (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HFGPT_SHARED", ROOT.parent / "shared"))
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def _find_shakespeare() -> Path:
    for candidate in (SHARED / "data" / "tinyshakespeare" / "input.txt", ROOT / "data" / "shakespeare_char" / "input.txt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"tiny Shakespeare not found: put it at {SHARED}/data/tinyshakespeare/input.txt or "
        f"{ROOT}/data/shakespeare_char/input.txt (download {SHAKESPEARE_URL}), or set HFGPT_SHARED")


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    """The 1,115,394-character tiny Shakespeare (read-only; copy it before writing next to it)."""
    return _find_shakespeare()


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare) -> str:
    return shakespeare.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    """GPT-2's real BPE files under their Hugging Face names: vocab.json and merges.txt."""
    src = SHARED / "gpt2"
    if not (src / "encoder.json").is_file():
        raise FileNotFoundError(f"GPT-2 BPE files not found in {src} (encoder.json, vocab.bpe): set HFGPT_SHARED")
    d = tmp_path_factory.mktemp("gpt2-bpe")
    shutil.copy(src / "encoder.json", d / "vocab.json")
    shutil.copy(src / "vocab.bpe", d / "merges.txt")
    return d


@pytest.fixture(scope="session")
def gpt2_medium_dir(tmp_path_factory, gpt2_dir) -> Path:
    """A tiny stand-in for openai-community/gpt2-medium, as its files are on the Hub: config.json with
    GPT-2's keys (task_specific_params too), generation_config.json, model.safetensors with non-zero
    biases (as a pretrained model has), GPT-2's real BPE (tokenizer.json, vocab.json, merges.txt)
    and tokenizer_config.json {"model_max_length": 1024}; 2 layers x 32 wide, 50,257 ids (6.6 MB)."""
    import json

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from hfgpt.data.tokenizer import bpe_from_vocab_merges

    folder = tmp_path_factory.mktemp("gpt2-medium")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50257, n_positions=1024, n_ctx=1024, n_embd=32, n_layer=2, n_head=2,
                        activation_function="gelu_new", bos_token_id=50256, eos_token_id=50256,
                        task_specific_params={"text-generation": {"do_sample": True, "max_length": 50}})
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.02)
    model.save_pretrained(folder)
    bpe_from_vocab_merges(gpt2_dir).backend_tokenizer.save(str(folder / "tokenizer.json"))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(gpt2_dir / name, folder / name)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
    return folder


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts without accelerate's process-wide state, as each training process does: a
    run in bf16 after one in float32 is then allowed, as in separate processes."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh working directory: data/ and out*/ of the run go here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


TINY = {
    "dataset": "tiny",
    "tokenizer": "char",
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "block_size": 32,
    "batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_iters": 100,
    "eval_interval": 50,
    "eval_iters": 5,
    "log_interval": 25,
    "learning_rate": 3e-3,
    "warmup_iters": 5,
    "lr_decay_iters": 100,
    "min_lr": 3e-4,
    "dropout": 0.0,
    "device": "cpu",
    # float32 whatever the CPU (auto is bf16 on CPUs with bf16 instructions): exact comparisons hold anywhere
    "mixed_precision": "no",
    "compile": False,
    "always_save_checkpoint": True,
}


@pytest.fixture
def tiny_recipe(workdir, shakespeare_text):
    """Write a tiny char-level recipe on the first 100k characters of Shakespeare; returns a
    function taking overrides and returning the recipe's path."""

    def make(name="tiny.yaml", text_chars=100_000, **overrides) -> Path:
        source = workdir / "tiny.txt"
        if not source.exists():
            source.write_text(shakespeare_text[:text_chars], encoding="utf-8")
        values = {**TINY, "source": str(source), "out_dir": str(workdir / "out"), **overrides}
        path = workdir / name
        path.write_text(yaml.safe_dump(values))
        return path

    return make


def run_env() -> dict:
    """The environment for subprocesses: offline, and able to import hfgpt from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


PYTHON = sys.executable


def free_port() -> int:
    """A TCP port nobody listens on now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_owner() -> str:
    """<host>-<pid> of a process that has ended, as the temporary names of a killed writer carry it."""
    from hfgpt.core.files import owner_tag

    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{owner_tag().rsplit('-', 1)[0]}-{proc.pid}"
