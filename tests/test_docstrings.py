"""Every hfgpt name that a docstring, a comment or a docs page mentions (hfgpt.x.y, python -m hfgpt.x)
exists: a module of that name, or a name in the longest module that its prefix names."""

import ast
import importlib
import importlib.util
import io
import re
import textwrap
import tokenize

from tests.conftest import ROOT

DOTTED = re.compile(r"\bhfgpt(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def docstrings_and_comments(path) -> str:
    """The module's, classes' and functions' docstrings and every comment of a Python file."""
    source = path.read_text(encoding="utf-8")
    nodes = [node for node in ast.walk(ast.parse(source))
             if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    texts = [ast.get_docstring(node, clean=False) or "" for node in nodes]
    texts += [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT]
    return "\n".join(texts)


def named(text: str) -> set[str]:
    """The dotted hfgpt names in text; a part in capitals is a placeholder (python -m hfgpt.STEP)."""
    return {name for name in DOTTED.findall(text) if not any(part.isupper() for part in name.split("."))}


def mentions() -> dict[str, set[str]]:
    """name -> the files (relative to the repository root) that mention it."""
    found: dict[str, set[str]] = {}
    files = [(p, docstrings_and_comments(p)) for p in sorted((ROOT / "hfgpt").rglob("*.py"))]
    files += [(p, p.read_text(encoding="utf-8")) for p in sorted((ROOT / "docs").glob("*.md"))]
    for path, text in files:
        for name in named(text):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def resolves(name: str) -> bool:
    """Whether name is a module, or its longest module prefix has the rest as attributes. A module is
    found without running it (hfgpt.bench.__main__ would run its main)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:  # a parent that is not a package
            continue
        if cut == len(parts):
            return True
        obj = importlib.import_module(module)
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_the_scan_reads_docstrings_and_comments_not_code(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(textwrap.dedent('''\
        """The docstring of a module that uses hfgpt.train."""


        def f():
            """See hfgpt.core.files.atomic_write."""
            return "hfgpt.not_read"  # python -m hfgpt.prepare, not python -m hfgpt.STEP
        '''))
    assert named(docstrings_and_comments(path)) == {"hfgpt.train", "hfgpt.core.files.atomic_write", "hfgpt.prepare"}
    assert any(f.startswith("docs/") for f in mentions()["hfgpt.train"])
    assert resolves("hfgpt.core.files.atomic_write") and resolves("hfgpt.bench.__main__")
    assert not resolves("hfgpt.core.files.no_such_name") and not resolves("hfgpt.no_such_module")


def test_every_hfgpt_name_in_the_docs_exists():
    stale = [f"{name} (in {', '.join(sorted(files))})" for name, files in sorted(mentions().items()) if not resolves(name)]
    assert not stale, "neither a module nor a name in one:\n" + "\n".join(stale)
