"""Typed options: a dataclass field is one option, declared once with everything code needs to know.

    @dataclass
    class SampleOptions:
        \"\"\"Generate text from a trained model.\"\"\"
        model: str = option(positional=True)
        \"\"\"out_dir of a training run, any model folder, or a Hub model id.\"\"\"
        top_k: int = option(200, min=0)
        \"\"\"Sample from the k likeliest tokens; 0 for all.\"\"\"

The docstring under a field is its help text. `option` records what a check or another module
needs: choices, a range (min, max, inclusive; above, exclusive), finite, whether the option is
positional, and for recipe keys what they shape (`shapes="data"`: the token files, so a change
prepares the data again; `shapes="model"`: the model, so a resume refuses a change;
`shapes="new_model"`: only a model built from scratch; `shapes="optimizer"`: the optimizer's
state, so a resume refuses a change too), which steps read them, and whether its
values may be URLs (`urls=True`: saved and shown without their query string and user:password@,
where presigned URLs keep their secrets), and whether a time budget's plan may choose it (`planned=True`:
when the user did not set it). Values from YAML and the command line are converted to the declared type.
"""

import ast
import dataclasses
import inspect
import math
import re
import textwrap
import types
import typing
from dataclasses import MISSING, field

import yaml

from hfgpt.config.yaml_load import load_yaml

NONE_WORDS = ("none", "null", "~", "")


def option(default=MISSING, *, choices: tuple | None = None, min: float | None = None, max: float | None = None,
           above: float | None = None, below: float | None = None, finite: bool = False, positional: bool = False,
           shapes: str | None = None, steps: tuple[str, ...] | None = None, urls: bool = False, planned: bool = False):
    """A dataclass field carrying its rules (see the module docstring)."""
    metadata = {"choices": choices, "min": min, "max": max, "above": above, "below": below, "finite": finite or None,
                "positional": positional, "shapes": shapes, "steps": steps, "urls": urls, "planned": planned}
    metadata = {k: v for k, v in metadata.items() if v is not None and v is not False}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass (or of the class it extends), read from
    the source."""
    docs = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def field_types(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def type_name(tp) -> str:
    if tp is type(None):
        return "None"
    if typing.get_origin(tp) is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    return tp.__name__


def _convert_list(key: str, value, item_type) -> list:
    """A YAML list, or on the command line a YAML flow list (--source=[a.txt, b.txt]); one value is a one-item list."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = load_yaml(value, f"--{key}")
        except yaml.YAMLError:
            raise ValueError from None
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise ValueError
    return [convert(key, item, item_type) for item in value]


def convert(key: str, value, tp):
    """Convert a YAML or command-line value to the declared type, or raise ValueError.

    In a union with list[...] (source: str | list[str]), a list stays a list and one value keeps
    its plain type, so `source: input.txt` still reads as a string.
    """
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)):
            return None
        lists = [a for a in args if typing.get_origin(a) is list]
        if lists and (isinstance(value, list) or (isinstance(value, str) and value.strip().startswith("["))):
            return _convert_list(key, value, typing.get_args(lists[0])[0])
        tp = next(a for a in args if a is not type(None) and a not in lists)
    if typing.get_origin(tp) is list:
        return _convert_list(key, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise ValueError
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        if not isinstance(number, int):
            raise ValueError
        return number
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list, bool)) or value is None:
            raise ValueError
        return str(value)
    raise TypeError(f"no converter for {key}: {tp}")


QUOTED_CHARS = 200  # of a value that an error message quotes


def quoted(value) -> str:
    """repr(value) for an error message, cut at QUOTED_CHARS (a value can be megabytes)."""
    text = repr(value)
    return text if len(text) <= QUOTED_CHARS else f"{text[:QUOTED_CHARS]}... ({len(text):,} characters)"


def _num(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def rule_problem(name: str, value, meta: dict) -> str | None:
    """What is wrong with `value` by the rules of its option, or None."""
    if value is None:
        return None
    if meta.get("choices") and value not in meta["choices"]:
        return f"{name}={quoted(value)} is not one of {', '.join(map(str, meta['choices']))}"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if meta.get("finite") and not math.isfinite(value):
        return f"{name}={value} must be a finite number"
    lo, hi, above, below = meta.get("min"), meta.get("max"), meta.get("above"), meta.get("below")
    if not (math.isnan(value) or (lo is not None and value < lo) or (hi is not None and value > hi)
            or (above is not None and value <= above) or (below is not None and value >= below)):
        return None
    bounds = [f"at least {_num(lo)}" if lo is not None else None, f"greater than {_num(above)}" if above is not None else None,
              f"at most {_num(hi)}" if hi is not None else None, f"less than {_num(below)}" if below is not None else None]
    return f"{name}={value} must be " + " and ".join(b for b in bounds if b)


def rule_text(meta: dict) -> str:
    """The rules of an option, for --help: 'one of a, b', '>= 1', ..."""
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    parts = []
    if meta.get("above") is not None:
        parts.append(f"> {_num(meta['above'])}")
    if meta.get("min") is not None:
        parts.append(f">= {_num(meta['min'])}")
    if meta.get("max") is not None:
        parts.append(f"<= {_num(meta['max'])}")
    if meta.get("below") is not None:
        parts.append(f"< {_num(meta['below'])}")
    return ", ".join(parts)


def problems_of(instance) -> list[str]:
    """Every rule a dataclass instance's values break."""
    problems = []
    for f in dataclasses.fields(instance):
        if (problem := rule_problem(f.name, getattr(instance, f.name), f.metadata)) is not None:
            problems.append(problem)
    return problems


def option_rows(cls, names: set[str] | None = None) -> list[dict]:
    """What --help and the docs show of each field of `cls` (only `names` when given): its name,
    whether it is positional, its default, type, rules ('one of a, b', '>= 1') and the docstring under it."""
    docs, types_ = field_docs(cls), field_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        rows.append({"name": f.name, "positional": bool(f.metadata.get("positional")), "default": default,
                     "type": type_name(types_[f.name]), "rules": rule_text(f.metadata), "doc": docs.get(f.name, "")})
    return rows


def help_lines(cls, names: set[str] | None = None) -> list[str]:
    """--help lines for the fields of `cls` (only `names` when given): flag, default, type, rules, doc."""
    lines = []
    for row in option_rows(cls, names):
        kind = row["type"] + (f"; {row['rules']}" if row["rules"] else "")
        if row["positional"]:
            lines.append(f"  {row['name'].upper()}  ({kind})")
        else:
            lines.append(f"  --{row['name']}={row['default']!r}  ({kind})")
        lines.append(f"      {row['doc']}")
    return lines


# Markdown for the docs (docs/hooks.py renders the recipe keys with markdown_reference)
_ESCAPE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\\": "\\\\", "*": "\\*", "_": "\\_",
                         "[": "\\[", "]": "\\]", "`": "\\`", "|": "\\|"})


def _text(text: str) -> str:
    """Plain text as Markdown that renders as written (no emphasis from **/*.md, no tags from <unk>),
    on one line, fit for a table cell."""
    return " ".join(text.split()).translate(_ESCAPE)


def _code(text: str) -> str:
    """`text` as a Markdown code span, fenced by more backticks than any run of them inside it."""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_table(cls, names: set[str] | None = None) -> str:
    """The fields of `cls` as a Markdown table, one row per field as --help shows it: key, type
    and rules, default, meaning."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for row in option_rows(cls, names):
        key = _code(row["name"].upper() if row["positional"] else row["name"])
        kind = _code(row["type"]) + (f"; {_text(row['rules'])}" if row["rules"] else "")
        default = "required" if row["positional"] and row["default"] is None else _code(repr(row["default"]))
        lines.append(f"| {key} | {kind} | {default} | {_text(row['doc'])} |")
    return "\n".join(lines)


def markdown_reference(sections: dict[str, type], heading: str = "###") -> str:
    """Every section and its fields as Markdown: a heading per section, its docstring, its table
    (docs/recipes.md gets hfgpt.config.recipe.SECTIONS so)."""
    parts = []
    for name, cls in sections.items():
        parts += [f"{heading} {name}", "", _text(cls.__doc__ or ""), "", markdown_table(cls), ""]
    return "\n".join(parts)
