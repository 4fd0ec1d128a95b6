"""The package's layers: every import inside hfgpt points down the stack (docs/architecture.md).

A module of one layer imports only layers strictly below its own; imports inside functions count
too (they are how the commands stay quick to start, not a way around the order).
"""

import ast
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "hfgpt"
# Lowest first. hub/ sits below training/: training pushes through it and resumes from it, and hub
# reads a run's folder only through core.layout. The commands (prepare, train, sample, eval, push,
# convert, export, cli) wire the stages together; bench measures them.
LAYERS = [
    {"core"},
    {"config"},
    {"data"},
    {"model"},
    {"hub", "gguf"},
    {"evaluation", "training"},
    {"commands"},
    {"bench"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def layer(module: str) -> str:
    """hfgpt.training.loop -> training; hfgpt.train (a command module) -> commands; hfgpt -> core."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__version__":
        return "core"  # hfgpt/__init__.py holds only __version__
    return parts[1] if (PACKAGE / parts[1]).is_dir() else "commands"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every hfgpt module the file imports, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "hfgpt"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "hfgpt":
            if node.module == "hfgpt":  # from hfgpt import train, __version__
                found += [(node.lineno, f"hfgpt.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def upward_imports() -> list[str]:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = layer(module_name(path))
        for line, target in imports(path):
            there = layer(target)
            if there != here and RANK[there] >= RANK[here]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({here}) imports {target} ({there})")
    return wrong


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages | {"commands"} == set(RANK), "a new package of hfgpt needs its place in LAYERS"


def test_imports_point_down_the_stack():
    assert upward_imports() == []


def test_hub_never_imports_training():
    """The Hub code reads and writes run folders through hfgpt.core.layout, never training's modules."""
    hub = [(path, target) for path in (PACKAGE / "hub").rglob("*.py") for _, target in imports(path)]
    assert hub, "no imports found: the scan is broken"
    assert [f"{path.name} imports {target}" for path, target in hub if layer(target) == "training"] == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The scan itself: an import of training from hub is found, inside a function too."""
    fake = tmp_path / "hfgpt"
    for name in ("core", "hub", "training"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text("")
    (fake / "hub" / "bad.py").write_text("def f():\n    from hfgpt.training.checkpoint import latest\n")
    (fake / "training" / "good.py").write_text("from hfgpt.hub import bad\nfrom hfgpt.core import layout\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert upward_imports() == ["hfgpt/hub/bad.py:2 (hub) imports hfgpt.training.checkpoint (training)"]
