"""The README's commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Setup", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", setup)


def test_ci_runs_the_readme_test_command():
    main_job, tests = readme_commands()
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert tests in ci_lines
    assert "pytest" in tests and "pip install" in tests


def test_main_job_uses_shipped_recipe_and_its_out_dir():
    import yaml

    main_job, _ = readme_commands()
    recipe = re.search(r"hfgpt\.train (\S+\.yaml)", main_job).group(1)
    out_dir = yaml.safe_load((ROOT / recipe).read_text())["out_dir"]
    assert f"hfgpt.sample {out_dir} " in main_job
