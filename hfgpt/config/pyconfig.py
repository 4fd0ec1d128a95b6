"""nanoGPT's own config files (config/train_shakespeare_char.py, ...) read without running them.

    values = read_py_config(Path("config/train_gpt2.py"))   # {"wandb_log": True, "batch_size": 12, ...}

nanoGPT exec()s such a file; hfgpt parses it (ast) and takes each `key = value` line whose value
is a literal (ast.literal_eval: numbers, strings, True/False/None, lists, dicts) or arithmetic on
number literals (`5 * 8`, `6e-4 / 10`, `2**18`). A later assignment of a key wins, as under exec.
Anything else (an import, a call, a name, a loop) is refused, one line each, naming its line: the
file is never executed.
"""

import ast
import operator
from pathlib import Path

from hfgpt.core.errors import UserError

ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
MAX_EXPONENT = 64  # 2**64 is the largest power a config needs; 10**10**10 would take the machine's memory


def number(node: ast.expr) -> int | float:
    """The value of arithmetic on int and float literals; ValueError for anything else."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = number(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        left, right = number(node.left), number(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or abs(left) > 2**MAX_EXPONENT):
            raise ValueError
        try:
            return ARITHMETIC[type(node.op)](left, right)
        except (ArithmeticError, TypeError):
            raise ValueError from None
    raise ValueError


def value_of(node: ast.expr):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return number(node)


def read_py_config(path: Path) -> dict:
    """The `key = literal` assignments of a nanoGPT config file, in order; UserError listing every
    other statement with its line."""
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise UserError(f"{path}: line {e.lineno} is not valid Python: {e.msg}") from None
    lines = source.splitlines()
    values, problems = {}, []
    for node in tree.body:
        text = lines[node.lineno - 1].strip()
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None
        if not isinstance(target, ast.Name):
            problems.append(f"{path}: line {node.lineno}: `{text}` is not a `key = value` line: hfgpt reads a .py "
                            "config's assignments of literal values without running the file; delete the line or "
                            "write the recipe in YAML")
            continue
        try:
            values[target.id] = value_of(node.value)
        except ValueError:
            problems.append(f"{path}: line {node.lineno}: the value of {target.id} is not a literal (a number, string, "
                            f"True/False/None, list or dict, or arithmetic on numbers): `{text}`; hfgpt does not run "
                            "the file: write the value itself")
    if problems:
        raise UserError("\n".join(problems))
    return values
