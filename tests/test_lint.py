"""The code passes ruff with the repository's settings (pyproject.toml's [tool.ruff])."""

import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_finds_nothing():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "hfgpt", "tests"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
