"""Build the text corpora hfgpt's time-budget rules were measured on, from files this machine has
(nothing is downloaded; the German and Russian ones need Debian's manpages-de / manpages-ru).

    python scripts/corpora.py OUT_DIR                  # every corpus it can build, as OUT_DIR/NAME.txt
    python scripts/corpora.py OUT_DIR --only=code,german

| name | what | size |
| --- | --- | --- |
| shakespeare | tiny Shakespeare (copied from ../shared when present) | 1.1 MB |
| code | Python source: the standard library's modules, sorted by path, each after a `# file: path` line | 1.1 MB |
| prose | English technical prose: the Python reference manual (pydoc_data.topics), then the standard library's docstrings of over 200 characters | 1.1 MB |
| german | German technical prose: Debian's German manual pages, rendered to text by groff | 1.1 MB |
| russian | Russian (Cyrillic) technical prose: Debian's Russian manual pages | up to 1.1 MB |
| small | the first 100 KB of prose | 100 KB |
| large | Python source of every installed package (site-packages), sorted by path | 20 MB |

Each corpus is one UTF-8 text (a char-level dataset as nanoGPT's shakespeare_char: its last 10%
validates), cut at a line end below its size; the same machine builds the same bytes.
"""

import argparse
import gzip
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

MB = 1_000_000
SIZES = {"shakespeare": None, "code": int(1.1 * MB), "prose": int(1.1 * MB), "german": int(1.1 * MB),
         "russian": int(1.1 * MB), "small": 100_000, "large": 20 * MB}


def cut(parts, size: int) -> str:
    """Concatenate texts until `size` characters, ending at a line end."""
    out, total = [], 0
    for part in parts:
        out.append(part)
        total += len(part)
        if total >= size:
            break
    text = "".join(out)[:size]
    return text[:text.rfind("\n") + 1] if "\n" in text else text


def python_files(root: Path):
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "tests" in path.parts or "__pycache__" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield f"# file: {path.relative_to(root)}\n{text}\n"


def code(size: int) -> str:
    return cut(python_files(Path(sysconfig.get_paths()["stdlib"])), size)


def large(size: int) -> str:
    return cut(python_files(Path(sysconfig.get_paths()["purelib"])), size)


def prose(size: int) -> str:
    import ast

    from pydoc_data.topics import topics

    parts = [f"{topics[name].strip()}\n\n" for name in sorted(topics)]
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if {"test", "tests", "idlelib", "lib2to3"} & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            doc = ast.get_docstring(node) if isinstance(node, kinds) else None
            if doc and len(doc) > 200:  # prose, not one-line summaries
                parts.append(f"{doc.strip()}\n\n")
    return cut(parts, size)


def manual_pages(language: str):
    """Debian's manual pages of `language`, rendered as plain UTF-8 text, sorted by file name."""
    root = Path("/usr/share/man") / language
    if not root.is_dir() or shutil.which("groff") is None:
        raise SystemExit(f"no manual pages in {root} (or no groff): apt-get install manpages-{language} groff")
    for path in sorted(root.rglob("*.gz")):
        source = gzip.decompress(path.read_bytes())
        text = subprocess.run(["groff", "-k", "-man", "-Tutf8", "-P-cbou"], input=source, capture_output=True).stdout
        yield text.decode("utf-8", "replace").replace("\ufffd", "") + "\n"


def shakespeare(_: int | None) -> str:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
    if not shared.is_file():
        raise SystemExit(f"tiny Shakespeare not found at {shared}")
    return shared.read_text(encoding="utf-8")


BUILDERS = {"shakespeare": shakespeare, "code": code, "prose": prose,
            "german": lambda size: cut(manual_pages("de"), size), "russian": lambda size: cut(manual_pages("ru"), size),
            "small": lambda size: prose(size), "large": large}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--only", default=",".join(BUILDERS), help="comma-separated corpus names")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.only.split(","):
        text = BUILDERS[name](SIZES[name])
        (out / f"{name}.txt").write_text(text, encoding="utf-8")
        print(f"{out / name}.txt: {len(text):,} characters, {len(set(text))} distinct, "
              f"{len(text.encode('utf-8')):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
