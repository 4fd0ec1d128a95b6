"""One parser for every command: a recipe file and `--key=value` overrides, and a command's own options.

    recipe = load_recipe("recipes/x.yaml", ["--max_iters=100"])        # defaults < YAML < overrides
    parsed = parse_command(argv, Command("train", "Train a GPT ...", recipe_step="train"))
    parsed = parse_command(argv, Command("sample", "Generate text ...", options=SampleOptions))
    parsed.recipe, parsed.options                                      # None when -h/--help was shown

    @command(Command("train", "Train a GPT.", recipe_step="train"))   # a command's main(argv=None)
    def main(parsed: Parsed) -> int: ...

The command line is `[POSITIONAL ...] [--key=value | --key value ...]`; a recipe command also takes
`--config RECIPE.yaml` in place of the positional recipe. A bool option given alone (`--private`)
is true. Every problem (unknown keys with a did-you-mean, bad types, values outside an option's
rules, cross-field problems of a recipe) is collected and reported at once.
"""

import dataclasses
import difflib
import functools
import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from pathlib import Path

import yaml

from hfgpt import __version__
from hfgpt.config.options import convert, field_types, help_lines, problems_of, quoted, type_name
from hfgpt.config.pyconfig import read_py_config
from hfgpt.config.checks import validate
from hfgpt.config.recipe import KEYS, SECTIONS, Recipe, keys_of_step, tracker_names
from hfgpt.config.yaml_load import load_yaml
from hfgpt.core.errors import UserError, cli

# Names from nanoGPT and its docs that hfgpt spells otherwise: the message points to ours.
RENAMED = {
    "lr": "learning_rate",
    "dtype": "mixed_precision (no, fp16 or bf16)",
    "backend": "nothing: accelerate picks the process-group backend",
}
# nanoGPT's `wandb_log: true` is read as written: it adds wandb to log_with.
WANDB_LOG = "wandb_log"
RECIPE_TYPES = {k: field_types(SECTIONS[s])[k] for k, s in KEYS.items()}


@dataclass
class Command:
    """What a command line holds: a recipe (recipe_step names the step whose keys --help shows),
    options of its own (a dataclass of `option` fields), or both."""

    name: str
    summary: str
    options: type | None = None
    recipe_step: str | None = None
    usage: str | None = None  # the usage line's arguments, when they are not the usual ones

    def usage_line(self) -> str:
        args = self.usage
        if args is None:
            positional = [f.name.upper() for f in dataclasses.fields(self.options or _Empty) if f.metadata.get("positional")]
            args = " ".join((["[RECIPE.yaml | --config RECIPE.yaml]"] if self.recipe_step else []) + positional
                            + ["[--key=value ...]"])
        return f"usage: hfgpt {self.name} {args}\n   or: python -m hfgpt.{self.name} {args}"


@dataclass
class _Empty:
    pass


@dataclass
class Parsed:
    recipe: Recipe | None
    options: object | None
    recipe_argv: list[str]  # the recipe's part of the command line, to pass on to a child command
    command_line: bool = False  # main() read sys.argv: the process was started to run this command


def unknown_key(key: str, where: str, extra: dict[str, str] | None = None, recipe: bool = True) -> str:
    """'unknown key' with a did-you-mean among the recipe keys (when the command reads a recipe) and
    the command's own options (`extra`: name -> command)."""
    if key in RENAMED and recipe:
        return f"{where}: unknown key '{key}': hfgpt calls it {RENAMED[key]}"
    known = {**(KEYS if recipe else {}), **(extra or {})}
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        section = known[close[0]]
        valid = [k for k, s in known.items() if s == section]
        return f"{where}: unknown key '{key}': did you mean '{close[0]}'? valid {section} keys: {', '.join(valid)}"
    return f"{where}: unknown key '{key}'; valid keys: {', '.join(known)}"


def split_argv(argv: list[str], flags: set[str]) -> tuple[list[str], dict[str, str], list[str]]:
    """Positionals, `--key=value` / `--key value` pairs, and problems. A key in `flags` (bool
    options) given alone means true."""
    positionals, values, problems = [], {}, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            positionals.append(arg)
            i += 1
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if key in flags and (nxt is None or nxt.startswith("--") or nxt.lower() not in ("true", "false", "1", "0")):
                value = "true"
            elif nxt is None or nxt.startswith("--"):
                problems.append(f"command line: --{key} needs a value: write --{key}=VALUE")
                i += 1
                continue
            else:
                value = nxt
                i += 1
        values[key] = value
        i += 1
    return positionals, values, problems


def _fill(instance, values: dict, where: str, problems: list[str]) -> None:
    types_ = field_types(type(instance))
    for key, value in values.items():
        try:
            setattr(instance, key, convert(key, value, types_[key]))
        except (ValueError, TypeError):
            problems.append(f"{where}: {key}={quoted(value)} is not a valid {type_name(types_[key])}")


def read_recipe_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe {path} not found: give the path of a YAML recipe, e.g. recipes/shakespeare_char_cpu.yaml")
    if p.suffix == ".py":  # a nanoGPT config file: its literal assignments, never run
        return read_py_config(p)
    try:
        loaded = load_yaml(p.read_text(encoding="utf-8"), path)  # safe_load, refusing duplicate keys and alias bombs
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: a recipe is a mapping of key: value lines, got a {type(loaded).__name__}")
    return loaded


def build_recipe(layers: list[tuple[str, dict]], problems: list[str], extra: dict[str, str] | None = None) -> Recipe:
    """Defaults, then each (where, values) layer in order; problems are appended, not raised.
    `extra` names a command's own options, for the did-you-mean of an unknown key."""
    recipe = Recipe()
    wandb_log = False
    for where, values in layers:
        for key, value in values.items():
            if key == WANDB_LOG:
                try:
                    wandb_log = convert(key, value, bool)
                except ValueError:
                    problems.append(f"{where}: {key}={value!r} is not a valid bool")
                continue
            if key not in KEYS:
                problems.append(unknown_key(str(key), where, extra))
                continue
            _fill(getattr(recipe, KEYS[key]), {key: value}, where, problems)
    if wandb_log and "wandb" not in tracker_names(recipe.log.log_with):
        recipe.log.log_with = ",".join(tracker_names(recipe.log.log_with) + ["wandb"])
    recipe.given = frozenset(k for _, values in layers for k in values if k in KEYS) | ({"log_with"} if wandb_log else set())
    return recipe


def recipe_problems(recipe: Recipe, where: str) -> list[str]:
    found = [p for section in SECTIONS for p in problems_of(getattr(recipe, section))] + validate(recipe)
    return [f"{where}: {p}" for p in found]


def load_recipe(path: str | None = None, overrides: list[str] | dict | None = None) -> Recipe:
    """Defaults, then the YAML file at `path`, then the overrides; every problem reported at once."""
    problems: list[str] = []
    layers = [(str(path), read_recipe_file(path))] if path is not None else []
    if isinstance(overrides, dict):
        layers.append(("overrides", overrides))
    elif overrides:
        positionals, values, arg_problems = split_argv(list(overrides), set())
        problems += arg_problems + [f"command line: unexpected argument '{a}': overrides are written --key=value"
                                    for a in positionals]
        layers.append(("command line", values))
    recipe = build_recipe(layers, problems)
    problems += recipe_problems(recipe, path or "recipe")
    if problems:
        raise UserError("\n".join(problems))
    return recipe


def command_help(command: Command) -> str:
    """The --help text: usage, summary, the command's options, then the recipe keys its step reads."""
    lines = [command.usage_line(), "", command.summary, ""]
    if command.options is not None and dataclasses.fields(command.options):
        lines += [f"options of {command.name}:", *help_lines(command.options), ""]
    if command.recipe_step:
        used = keys_of_step(command.recipe_step)
        lines.append(f"recipe keys that {command.name} reads (in the YAML file or as --key=value):")
        for section, cls in SECTIONS.items():
            names = {f.name for f in dataclasses.fields(cls)} & used
            if names:
                lines += [f"{section}: {cls.__doc__}", *help_lines(cls, names), ""]
    lines.append(f"hfgpt {__version__}")
    return "\n".join(lines)


def parse_command(argv: list[str] | None, command: Command) -> Parsed | None:
    """Parse a command line; prints --help and returns None for -h/--help."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(command_help(command))
        return None
    own = {f.name: f for f in dataclasses.fields(command.options)} if command.options is not None else {}
    flags = {k for k, f in own.items() if field_types(command.options)[k] in (bool, bool | None)}
    positionals, values, problems = split_argv(argv, flags)
    path = values.pop("config", None) if command.recipe_step else None
    if command.recipe_step and path is None and positionals:
        path = positionals.pop(0)
    wanted = [name for name, f in own.items() if f.metadata.get("positional")]
    for extra in positionals[len(wanted):]:
        problems.append(f"command line: unexpected argument '{extra}': options are written --key=value")
    options = None
    if command.options is not None:
        given = dict(zip(wanted, positionals))
        given |= {k: v for k, v in values.items() if k in own}
        missing = [name.upper() for name in wanted if name not in given and own[name].default is MISSING
                   and own[name].default_factory is MISSING]
        if missing:
            raise UserError(f"{' and '.join(missing)} is missing: {command.usage_line().splitlines()[0]}")
        options = _new(command.options, given, problems)
    rest = {k: v for k, v in values.items() if k not in own}
    mine = {k: command.name for k in own}
    recipe = None
    if command.recipe_step:
        layers = ([(path, read_recipe_file(path))] if path else []) + [("command line", rest)]
        recipe = build_recipe(layers, problems, mine)
        problems += recipe_problems(recipe, path or "recipe")
    else:
        problems += [unknown_key(k, "command line", mine, recipe=False) if k not in KEYS else
                     f"command line: --{k} is a recipe key; {command.name} does not read it" for k in rest]
    if options is not None:
        problems += [f"command line: --{p}" for p in problems_of(options)]
    if problems:
        raise UserError("\n".join(problems))
    return Parsed(recipe, options, ([path] if path else []) + [f"--{k}={v}" for k, v in rest.items()])


def _new(cls, given: dict, problems: list[str]):
    """An instance of the options dataclass from the given string values (positionals filled first)."""
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is MISSING and f.default_factory is MISSING:
            defaults[f.name] = None
    instance = cls(**defaults)
    _fill(instance, given, "command line", problems)
    return instance


def command(spec: Command) -> Callable:
    """Make `run(parsed) -> int` a command's `main(argv=None) -> int`: parse the command line
    (--help printed, exit 0), then run, with hfgpt's one-line errors (hfgpt.core.errors.cli).

        @command(Command("sample", "Generate text.", options=SampleOptions))
        def main(parsed: Parsed) -> int: ...
    """

    def wrap(run: Callable[[Parsed], int]) -> Callable:
        @cli
        @functools.wraps(run)
        def main(argv=None) -> int:
            parsed = parse_command(argv, spec)
            if parsed is not None:
                parsed.command_line = argv is None
            return 0 if parsed is None else run(parsed)

        main.spec = spec
        return main

    return wrap
