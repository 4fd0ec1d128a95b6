"""MkDocs hooks (mkdocs.yml's `hooks:`): generated parts of the pages, filled in when the site is built.

    <!-- recipe-keys -->    every recipe section and key (hfgpt.config.options.markdown_reference:
                            the fields --help prints, so a key is documented once, by its field)
    <!-- readme-setup -->   the README's "Setup: two commands" section (tests/test_readme.py and
                            .ci/run read it there)
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's hfgpt, whatever the environment has installed

RECIPE_KEYS = "<!-- recipe-keys -->"
README_SETUP = "<!-- readme-setup -->"


def recipe_keys() -> str:
    from hfgpt.config.options import markdown_reference
    from hfgpt.config.recipe import SECTIONS

    return markdown_reference(SECTIONS)


def readme_setup() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return "## Setup" + text.split("\n## Setup", 1)[1].split("\n## ", 1)[0].rstrip() + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Each marker that is a line of its own (one quoted in the text stays as it is) replaced."""
    for marker, make in ((RECIPE_KEYS, recipe_keys), (README_SETUP, readme_setup)):
        line = re.compile(rf"^{re.escape(marker)}$", re.M)
        if line.search(markdown):
            markdown = line.sub(lambda _: make(), markdown)
    return markdown
