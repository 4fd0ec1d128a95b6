"""Recipes that safe_load reads silently wrong or dangerously: a key given twice, an alias bomb."""

import pytest

from hfgpt import prepare
from hfgpt.config import load_recipe
from hfgpt.core.errors import UserError
from tests.helpers import error_lines


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("max_iters: 5\ndataset: x\n# the second one would win\nmax_iters: 7\n")
    with pytest.raises(UserError, match=r"key 'max_iters' is given twice \(lines 1 and 4\)"):
        load_recipe(str(path))


def bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines + [f"source: [{', '.join([f'*a{levels - 1}'] * 9)}]"]) + "\n"


@pytest.mark.parametrize("levels", [4, 9])
def test_an_alias_bomb_is_refused_in_one_short_line(tmp_path, capsys, levels):
    """Four levels (6,561 values, 4 on the command line's list too) read as a value that is no text:
    one short line (on main it repeated the value, 3.9 MB at five levels); nine expand past the
    limit and are refused before anything is built (on main: minutes and gigabytes)."""
    path = tmp_path / "r.yaml"
    path.write_text(bomb(levels))
    assert prepare.main([str(path)]) == 2
    errors = error_lines(capsys)
    assert errors and all(len(line) < 2500 for line in errors)
    if levels == 9:
        assert len(errors) == 1 and "expand to more than 100,000 values" in errors[0]
    assert prepare.main([f"--source=[&x [a, a, a], {', '.join(['*x'] * 3)}]", "--dataset=x"]) == 2
    assert all(len(line) < 2500 for line in error_lines(capsys))
