"""The docs: the site builds in strict mode (no broken link or anchor), every page is in the nav,
the README stays short, the recipe keys are rendered from the fields --help prints, and every shell
block marked `<!-- runnable -->` runs (docs/architecture.md, These docs)."""

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_env

DOCS = ROOT / "docs"
RUNNABLE = "<!-- runnable -->"
README_LIMIT = 15_000  # bytes: the README is the tour; the manual is docs/


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def nav_pages() -> list[str]:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    return [page for entry in nav for page in entry.values()]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as `mkdocs build --strict` writes it: a warning (a link to a missing page or anchor,
    a page left out of the nav) fails the build."""
    out = tmp_path_factory.mktemp("site")
    env = run_env() | {"NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2.0
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def built(site: Path, page: str) -> str:
    """The HTML that docs/PAGE became."""
    name = "index.html" if page == "index.md" else f"{page.removesuffix('.md')}/index.html"
    return (site / name).read_text(encoding="utf-8")


def page_text(site: Path, page: str) -> str:
    """A built page's text, tags stripped and entities decoded: what a reader sees."""
    return html.unescape(re.sub(r"<[^>]+>", "", built(site, page)))


def page_ids(site: Path, page: str) -> set[str]:
    """The anchors of a built page."""
    return set(re.findall(r'id="([^"]+)"', built(site, page)))


@pytest.mark.e2e
def test_the_site_builds_strictly_with_every_page_in_the_nav(site):
    assert sorted(nav_pages()) == sorted(p.name for p in pages())
    assert all(page_text(site, page).strip() for page in nav_pages())


@pytest.mark.e2e
def test_the_readme_is_short_and_its_links_reach_pages_and_anchors_that_exist(site):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= README_LIMIT
    links = re.findall(r"\]\(docs/([\w-]+\.md)(?:#([\w-]+))?\)", readme)
    assert {page for page, _ in links} == {p.name for p in pages()}  # the README points to every page
    for page, anchor in links:
        assert not anchor or anchor in page_ids(site, page), f"docs/{page}#{anchor}"


@pytest.mark.e2e
def test_the_docs_home_has_the_readmes_setup_commands(site):
    setup = (ROOT / "README.md").read_text().split("## Setup", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", setup)
    assert len(commands) == 2
    home = page_text(site, "index.md")
    assert all(command in home for command in commands)


def test_the_key_reference_is_every_fields_help():
    """docs/recipes.md's key reference and --help come from the same rows (option_rows)."""
    from hfgpt.config.options import markdown_reference, option_rows
    from hfgpt.config.parse import Command, command_help
    from hfgpt.config.recipe import KEYS, SECTIONS

    reference = markdown_reference(SECTIONS)
    train_help = command_help(Command("train", "", recipe_step="train"))
    rows = {line.split(" | ")[0].strip("| `"): line for line in reference.splitlines() if line.startswith("| `")}
    assert sorted(rows) == sorted(KEYS)  # one row per key, no other
    for section, cls in SECTIONS.items():
        assert f"### {section}\n" in reference
        for row in option_rows(cls):
            line = rows[row["name"]]
            assert f"| `{row['default']!r}` |" in line and f"`{row['type']}`" in line
            assert f"--{row['name']}={row['default']!r}  ({row['type']}" in train_help  # --help's line of the key
            assert row["doc"] and f"      {row['doc']}" in train_help


@pytest.mark.e2e
def test_the_key_reference_renders_as_written(site):
    """Every key on the built recipes page, and text that Markdown would otherwise change
    (**/*.md as bold, <|endoftext|> as a tag, | as a cell border) shown as in the field's docstring."""
    from hfgpt.config.options import option_rows
    from hfgpt.config.recipe import SECTIONS

    text = page_text(site, "recipes.md")
    ids = page_ids(site, "recipes.md")
    assert set(SECTIONS) <= ids
    for cls in SECTIONS.values():
        for row in option_rows(cls):
            assert row["doc"] in text, row["name"]
            assert f"{row['name']}\n{row['type']}" in text, row["name"]  # the key's cell, then its type's
    assert "(e.g. ['**/*.md', '**/*.py'])" in text and "(256 bytes + <|endoftext|> + merges)" in text
    assert "<!-- recipe-keys -->" not in built(site, "recipes.md")
    assert "<!-- recipe-keys -->" in page_text(site, "architecture.md")  # quoted in the text, not a marker


def runnable_blocks() -> list:
    """(where, code) of every shell block whose fence is the line after a `<!-- runnable -->` line, in
    the README and the pages; a marker not followed by a ```sh or ```bash block gives (where, None)."""
    blocks = []
    for path in [ROOT / "README.md", *pages()]:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.rstrip() != RUNNABLE:  # unindented: the marker inside an example block is not one
                continue
            where = f"{path.relative_to(ROOT)}:{i + 1}"
            if i + 1 >= len(lines) or lines[i + 1].strip() not in ("```sh", "```bash") or "```" not in lines[i + 2:]:
                blocks.append(pytest.param(where, None, id=where))
                continue
            end = lines.index("```", i + 2)
            blocks.append(pytest.param(where, "\n".join(lines[i + 2:end]) + "\n", id=where))
    return blocks


def test_the_docs_mark_runnable_blocks():
    """The README and the pages that show a quick command mark it (a test of nothing would pass)."""
    marked = {where.split(":")[0] for where, _ in (p.values for p in runnable_blocks())}
    assert {"README.md", "docs/index.md", "docs/data.md", "docs/recipes.md"} <= marked


@pytest.mark.e2e
@pytest.mark.parametrize("where, code", runnable_blocks())
def test_a_runnable_block_runs(where, code, tmp_path):
    """Each block in a fresh folder, as a reader would paste it, offline, with this checkout's hfgpt
    and the test environment's python first on the PATH."""
    assert code is not None, f"{where}: {RUNNABLE} must be the line before a ```sh block"
    (tmp_path / "block.sh").write_text(code)
    env = run_env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    done = subprocess.run(["bash", "-e", "block.sh"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, f"{where}:\n{code}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
