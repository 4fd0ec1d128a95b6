"""scripts/gpu_check.sh and scripts/gpu_bundle.sh on the CPU: without a CUDA device the check stops
at once with exit 3; its dry run (DRY_RUN=1) runs every step at its smallest, from a .gpu/ folder
the bundle script filled (a stand-in nanoGPT: the real one is never part of this repository), with
`datasets` and `evaluate` missing as on the GPU machine, and leaves each step's figures as files."""

import json
import os
import zipfile
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, run_env
from tests.helpers import run

pytestmark = pytest.mark.e2e

FAKE_NANOGPT = {  # what the steps use of a nanoGPT clone, printing what its scripts print
    "model.py": "class GPTConfig:\n    pass\n\n\nclass GPT:\n    pass\n",
    "bench.py": "import sys\nprint('time per iteration: 12.5000ms, MFU: 10.00%', sys.argv[1:])\n",
    "train.py": "import sys\nprint(sys.argv[1:])\nfor i, v in ((0, 4.2), (2, 3.9), (4, 3.5)):\n"
                "    print(f'step {i}: train loss {v - 0.05:.4f}, val loss {v:.4f}')\n",
    "config/train_shakespeare_char.py": "",
    "data/shakespeare_char/prepare.py": "import numpy as np\nnp.zeros(10, np.uint16).tofile('train.bin')\n"
                                        "np.zeros(10, np.uint16).tofile('val.bin')\n"
                                        "open('meta.pkl', 'wb').write(b'')\n",
}


def environment(tmp_path: Path, **extra) -> dict:
    """Offline, this checkout's hfgpt, and no `datasets` or `evaluate` (the GPU machine has neither)."""
    missing = tmp_path / "missing"
    for name in ("datasets", "evaluate"):
        (missing / name).mkdir(parents=True, exist_ok=True)
        (missing / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    env = run_env()
    return {**env, "PYTHON": PYTHON, "PYTHONPATH": f"{missing}{os.pathsep}{env['PYTHONPATH']}", **extra}


def test_without_a_cuda_device_the_check_stops_at_once(tmp_path):
    out = run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")], cwd=tmp_path,
              env=environment(tmp_path, GPU_DIR=str(tmp_path / "none")), timeout=120)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "error: torch sees no CUDA device" in out.stderr
    steps = [json.loads(line) for line in (tmp_path / "out" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ["machine"]  # nothing else ran


def test_the_dry_run_runs_every_step_from_a_bundle(tmp_path, shakespeare_text):
    clone = tmp_path / "nanoGPT"
    for name, text in FAKE_NANOGPT.items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text(text)
    (tmp_path / "input.txt").write_text(shakespeare_text[:100_000])
    gpu = tmp_path / "gpu"
    env = environment(tmp_path, GPU_DIR=str(gpu), BUNDLE="nanogpt data")
    bundled = run(["bash", str(ROOT / "scripts" / "gpu_bundle.sh"), str(clone), str(tmp_path / "input.txt")], cwd=tmp_path,
                  env=env, timeout=300)
    assert bundled.returncode == 0, bundled.stdout + bundled.stderr
    assert sorted(p.name for p in (gpu / "nanoGPT" / "data" / "shakespeare_char").iterdir()) == [
        "meta.pkl", "prepare.py", "train.bin", "val.bin"]  # its own prepare.py ran; input.txt not kept
    assert (gpu / "data" / "shakespeare_char" / "meta.json").is_file()
    (gpu / "whl").mkdir()
    for dist in ("hfgpt_test_only_dist", "pytest"):  # a distribution this Python lacks, and one it has
        with zipfile.ZipFile(gpu / "whl" / f"{dist}-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{dist}_module/__init__.py", "")

    out_dir = tmp_path / "out"
    out = run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out_dir)], cwd=tmp_path,
              env={**env, "DRY_RUN": "1"}, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "unpacked hfgpt_test_only_dist-1.0" in out.stdout and "unpacked pytest" not in out.stdout
    steps = [json.loads(line) for line in (out_dir / "steps.jsonl").read_text().splitlines()]
    assert [(s["step"], s["rc"]) for s in steps] == [(n, 0) for n in ("machine", "bench", "recipe", "smoke", "tests")]
    bench = json.loads((out_dir / "bench-gpu.json").read_text())
    assert bench["nanogpt"]["ms_per_iter"] == 12.5 and bench["hfgpt"]["ms_per_iter"] > 0 and bench["ratio_ms_per_iter"]
    recipe = json.loads((out_dir / "recipe.json").read_text())
    assert recipe["nanogpt"]["val_loss"] == 3.5 and recipe["hfgpt"]["val_loss"] > 0
    assert [i for i, _ in recipe["hfgpt"]["evaluations"]] == [0, 2, 4]  # the dry run's 4 iterations
    smoke = json.loads((out_dir / "smoke.json").read_text())
    assert all(smoke[name]["rows"] and smoke[name]["val_loss"] for name in ("ddp", "fsdp"))
    assert (out_dir / "test_gpu.xml").is_file() and "every GPU test is skipped" in (out_dir / "tests.txt").read_text()


def test_a_step_over_the_budget_is_skipped(tmp_path):
    """BUDGET too small for a step's minimum: it is skipped and said so, and the check still ends."""
    out = run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")], cwd=tmp_path,
              env=environment(tmp_path, DRY_RUN="1", BUDGET="20", STEPS="bench tests", GPU_DIR=str(tmp_path / "none")),
              timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    steps = [json.loads(line) for line in (tmp_path / "out" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ["bench", "tests"] and all(s["skipped"] for s in steps)
