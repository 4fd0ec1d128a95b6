"""Recipes: typed dataclass sections, filled from a flat YAML file and `--key=value` overrides.

    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --max_iters=100 --compile=False
    python -m hfgpt.train --help        # every key with its type, default and meaning

A recipe is flat, with nanoGPT's names, so a nanoGPT config reads as written; each key belongs
to exactly one section below. Defaults < YAML < command line. Values are converted to the
field's declared type (`--dropout=0.1`, `--compile=False`, `--init_from=None`). Every problem in
a recipe is collected and reported together, one line each.
"""

import ast
import dataclasses
import difflib
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hfgpt.errors import UserError

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes tokens (python -m hfgpt.prepare)."""

    dataset: str = "openwebtext"
    """Name of the dataset: its token files, meta.json and tokenizer live in data_dir/dataset/."""
    data_dir: str = "data"
    """Folder that holds one subfolder per dataset."""
    source: str | list[str] | None = None
    """Text to prepare: a text file, folder, glob, .jsonl/.json/.csv/.parquet file, http(s) URL, Hub dataset id or nanoGPT data folder; or a list of these ([a.txt, docs/])."""
    file_glob: str | list[str] = "**/*.txt"
    """Files a folder source contributes, matched below it (e.g. ['**/*.md', '**/*.py'])."""
    text_column: str = "text"
    """Column that holds the text in .jsonl/.json/.csv/.parquet files and Hub datasets: one document per row."""
    source_config: str | None = None
    """Configuration (subset) name of a Hub dataset, as load_dataset's second argument."""
    source_split: str = "train"
    """Split of a Hub dataset to read; validation is carved out of it by val_fraction."""
    streaming: bool = False
    """Read .jsonl/.json/.csv/.parquet and Hub datasets as a stream (no local copy); each document then goes to validation with probability val_fraction."""
    errors: str = "strict"
    """Bytes that are not UTF-8: 'strict' stops with the file and byte offset, 'replace' writes U+FFFD, 'ignore' drops them."""
    tokenizer: str = "char"
    """'char' (one id per character, as nanoGPT's shakespeare_char), 'byte' (256 byte ids), 'bpe' (byte-level BPE learned from the training text), 'gpt2', or any Hugging Face tokenizer id or folder."""
    vocab_size: int | None = None
    """Number of ids a 'bpe' tokenizer learns (256 bytes + <|endoftext|> + merges); only used with tokenizer: bpe."""
    val_fraction: float = 0.1
    """Share held out for validation: the last val_fraction of the tokens for one text stream (as nanoGPT), else that share of the documents, picked with seed."""
    shard_size: int = 100_000_000
    """Most tokens per token file; a split larger than this is written as train-00000.bin, train-00001.bin, ..."""
    num_proc: int | None = None
    """Threads that tokenize in parallel (the tokenizers release the GIL); None uses every core."""


@dataclass
class ModelConfig:
    """The GPT: built from these numbers, or loaded and cropped to block_size."""

    init_from: str = "scratch"
    """'scratch' builds a new GPT2LMHeadModel; 'resume' continues the run in out_dir; otherwise a Hub model id (gpt2, gpt2-medium, user/name, user/name@revision for a branch, tag or commit) or a local model folder."""
    n_layer: int = 12
    """Transformer blocks."""
    n_head: int = 12
    """Attention heads per block; must divide n_embd."""
    n_embd: int = 768
    """Width of the residual stream."""
    block_size: int = 1024
    """Context length in tokens (the model's n_positions); a loaded model is cropped to it."""
    dropout: float = 0.0
    """Dropout on embeddings, attention and residuals: 0 for pretraining, try 0.1+ for finetuning."""
    bias: bool = True
    """False fixes the Linear and LayerNorm biases at zero, as nanoGPT's bias=False (the saved model keeps GPT-2's layout)."""


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (linear warmup, then cosine to min_lr)."""

    learning_rate: float = 6e-4
    """Peak learning rate."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to tensors with 2 or more dimensions only."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the gradient norm at this value; 0 disables clipping."""
    decay_lr: bool = True
    """Decay the learning rate with warmup + cosine; False keeps it constant at learning_rate."""
    warmup_iters: int = 2000
    """Iterations of linear warmup."""
    lr_decay_iters: int = 600000
    """Iteration at which the cosine reaches min_lr; usually equal to max_iters."""
    min_lr: float = 6e-5
    """Floor of the schedule; usually learning_rate / 10."""


@dataclass
class TrainConfig:
    """The training loop: batches, iterations, evaluation and where results go."""

    out_dir: str = "out"
    """Folder for the trained model (a standard Hugging Face model folder) and metrics.jsonl."""
    batch_size: int = 12
    """Windows per micro-batch on each process."""
    gradient_accumulation_steps: int = 40
    """Micro-batches per iteration, summed over all processes (the global batch does not change with their number)."""
    max_iters: int = 600000
    """Training iterations (optimizer steps)."""
    eval_interval: int = 2000
    """Estimate train and val loss, and save when val improves, every this many iterations."""
    eval_iters: int = 200
    """Batches per loss estimate."""
    eval_only: bool = False
    """Exit after the first evaluation."""
    log_interval: int = 1
    """Log loss, lr and tokens/s every this many iterations."""
    always_save_checkpoint: bool = True
    """Save the model in out_dir at every evaluation, not only when val loss improves."""
    keep_last: int | None = 2
    """Resumable checkpoints kept in out_dir/checkpoints (written at every evaluation); the best one is kept too; None keeps all."""
    resume_from: str | None = None
    """With init_from=resume: the checkpoint folder to continue from, or a Hub repo pushed with hub_strategy=checkpoint (user/name[@revision]: its last-checkpoint/ is downloaded); None takes the newest complete one in out_dir/checkpoints."""
    seed: int = 1337
    """Seed for initialisation, batches and dropout (each process adds its rank)."""


@dataclass
class SystemConfig:
    """Device, precision and compilation."""

    device: str = "auto"
    """'auto' lets Accelerate pick (CUDA, then MPS, then CPU); 'cpu', 'cuda' or 'mps' insist on one."""
    mixed_precision: str = "auto"
    """'no', 'fp16' or 'bf16'; 'auto' takes accelerate's config, else bf16 on GPUs that support it and on CPUs with AMX, else fp16 on CUDA, else no."""
    compile: bool | None = None
    """torch.compile the model; None turns it on for CUDA and off on CPU and MPS."""


@dataclass
class LogConfig:
    """Watching a run: trackers and the texts generated at each evaluation (metrics.jsonl and loss.png are always written)."""

    log_with: str | None = None
    """Trackers that receive every log line and evaluation, comma-separated: tensorboard (out_dir/runs/), wandb (out_dir/wandb/), or aim, clearml, comet_ml, dvclive, mlflow, swanlab, trackio; None: metrics.jsonl only."""
    wandb_project: str = "hfgpt"
    """Project name for the trackers: wandb's project, and tensorboard's folder out_dir/runs/<wandb_project>/."""
    wandb_run_name: str | None = None
    """Name of the run in wandb; None lets wandb pick one."""
    eval_samples: int | None = None
    """Texts generated at each evaluation, written to metrics.jsonl, the trackers and the model card; None: 1 on a GPU, 0 on the CPU (where generating slows small runs)."""
    sample_start: str = "\n"
    """Prompt of the texts generated at each evaluation."""
    sample_max_new_tokens: int = 200
    """Tokens generated per evaluation sample."""


@dataclass
class HubConfig:
    """Sharing the run on the Hugging Face Hub (python -m hfgpt.push OUT_DIR does it for a finished run)."""

    push_to_hub: bool = False
    """Upload out_dir to the Hub repo hub_model_id: in the background while training (see hub_strategy) and, waited for, at the end."""
    hub_model_id: str | None = None
    """The Hub repo, 'user/name' or 'org/name' (created if missing); None: <your user name>/<out_dir's folder name>."""
    hub_private: bool | None = None
    """Create the repo private (True) or public (False); None keeps the Hub's default for you or your org."""
    hub_strategy: str = "every_save"
    """When to push: 'end' once after training; 'every_save' also whenever out_dir is saved; 'checkpoint' also the newest resumable checkpoint as last-checkpoint/ at every evaluation, so the run can resume from the Hub (resume_from=user/name)."""


@dataclass
class Recipe:
    """Everything a run needs, one section per job."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    log: LogConfig = field(default_factory=LogConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def to_dict(self) -> dict:
        """The flat key -> value form a recipe file uses."""
        return {k: v for section in SECTIONS for k, v in dataclasses.asdict(getattr(self, section)).items()}


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Recipe)}
KEYS = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
CHOICES = {
    "errors": ("strict", "replace", "ignore"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "mixed_precision": ("auto", "no", "fp16", "bf16"),
    "hub_strategy": ("end", "every_save", "checkpoint"),
}
# The trackers Accelerate knows by name (accelerate.tracking.LOGGER_TYPE_TO_CLASS).
TRACKERS = ("tensorboard", "wandb", "aim", "clearml", "comet_ml", "dvclive", "mlflow", "swanlab", "trackio")
# Names from nanoGPT and its docs that hfgpt spells otherwise: the message points to ours.
RENAMED = {
    "lr": "learning_rate",
    "dtype": "mixed_precision (no, fp16 or bf16)",
    "backend": "nothing: accelerate picks the process-group backend",
}
# nanoGPT's `wandb_log: true` is read as written: it adds wandb to log_with.
WANDB_LOG = "wandb_log"


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _field_types() -> dict[str, object]:
    return {k: typing.get_type_hints(SECTIONS[s])[k] for k, s in KEYS.items()}


FIELD_TYPES = _field_types()


def _type_name(tp) -> str:
    if tp is type(None):
        return "None"
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return tp.__name__


def _convert_list(key: str, value, item_type) -> list:
    """A YAML list, or on the command line a YAML flow list (--source=[a.txt, b.txt]); one value is a one-item list."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = yaml.safe_load(value)
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
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~", ""))):
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


def _unknown_key(key: str, where: str) -> str:
    if key in RENAMED:
        return f"{where}: unknown key '{key}': hfgpt calls it {RENAMED[key]}"
    close = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.6)
    if close:
        section = KEYS[close[0]]
        valid = ", ".join(f.name for f in dataclasses.fields(SECTIONS[section]))
        return f"{where}: unknown key '{key}': did you mean '{close[0]}'? valid {section} keys: {valid}"
    return f"{where}: unknown key '{key}'; valid keys: {', '.join(KEYS)}"


def validate(recipe: Recipe) -> list[str]:
    """Problems that involve more than one value, or a value outside its range."""
    d, m, o, t = recipe.data, recipe.model, recipe.optim, recipe.train
    problems = []

    def need(ok: bool, message: str):
        if not ok:
            problems.append(message)

    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        need(getattr(m, name) >= 1, f"{name}={getattr(m, name)} must be at least 1")
    for name in ("batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval"):
        need(getattr(t, name) >= 1, f"{name}={getattr(t, name)} must be at least 1")
    need(t.max_iters >= 0, f"max_iters={t.max_iters} must be 0 or more")
    need(t.keep_last is None or t.keep_last >= 1, f"keep_last={t.keep_last} must be at least 1 (or None to keep all)")
    need(t.resume_from is None or m.init_from == "resume",
         f"resume_from={t.resume_from} is set but init_from='{m.init_from}': set init_from: resume")
    if m.n_head >= 1:
        need(m.n_embd % m.n_head == 0,
             f"n_embd={m.n_embd} is not divisible by n_head={m.n_head}: pick n_embd a multiple of n_head "
             f"(e.g. {m.n_head * max(1, round(m.n_embd / m.n_head))})")
    need(0.0 <= m.dropout < 1.0, f"dropout={m.dropout} must be in [0, 1)")
    need(0.0 < d.val_fraction < 1.0, f"val_fraction={d.val_fraction} must be between 0 and 1")
    need(d.num_proc is None or d.num_proc >= 1, f"num_proc={d.num_proc} must be at least 1 (or None)")
    if d.tokenizer == "bpe":
        need(d.vocab_size is not None and d.vocab_size >= 258,
             f"tokenizer=bpe needs vocab_size of at least 258 (256 bytes, <|endoftext|> and a merge), got "
             f"{d.vocab_size}: set e.g. --vocab_size=4096")
    else:
        need(d.vocab_size is None, f"vocab_size={d.vocab_size} is only used with tokenizer=bpe, not "
                                   f"tokenizer={d.tokenizer}: remove it (the tokenizer decides its vocabulary)")
    need(d.shard_size > m.block_size, f"shard_size={d.shard_size} must be larger than block_size={m.block_size}: "
                                      "a training window never crosses a shard boundary")
    need(o.learning_rate > 0, f"learning_rate={o.learning_rate} must be positive")
    need(o.warmup_iters >= 0, f"warmup_iters={o.warmup_iters} must be 0 or more")
    if o.decay_lr:
        need(0 <= o.min_lr <= o.learning_rate,
             f"min_lr={o.min_lr} must be between 0 and learning_rate={o.learning_rate} (or set decay_lr: false)")
        need(o.lr_decay_iters > o.warmup_iters,
             f"lr_decay_iters={o.lr_decay_iters} must be larger than warmup_iters={o.warmup_iters} "
             "(or set decay_lr: false)")
    need(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, f"beta1={o.beta1}, beta2={o.beta2} must be in [0, 1)")
    need(o.grad_clip >= 0, f"grad_clip={o.grad_clip} must be 0 (off) or positive")
    need(o.weight_decay >= 0, f"weight_decay={o.weight_decay} must be 0 or more")
    for key, allowed in CHOICES.items():
        value = getattr(getattr(recipe, KEYS[key]), key)
        need(value in allowed, f"{key}='{value}' is not one of {', '.join(allowed)}")
    log, hub = recipe.log, recipe.hub
    for name in tracker_names(log.log_with):
        need(name in TRACKERS, f"log_with: '{name}' is not a tracker; choose from {', '.join(TRACKERS)} (comma-separated)")
    need(log.eval_samples is None or log.eval_samples >= 0, f"eval_samples={log.eval_samples} must be 0 or more")
    need(log.sample_max_new_tokens >= 1, f"sample_max_new_tokens={log.sample_max_new_tokens} must be at least 1")
    need(hub.hub_model_id is None or re.fullmatch(r"([\w.-]+/)?[\w.-]+", hub.hub_model_id) is not None,
         f"hub_model_id='{hub.hub_model_id}' is not a Hub repo id: write user/name or org/name")
    return problems


def tracker_names(log_with: str | None) -> list[str]:
    """'tensorboard, wandb' -> ['tensorboard', 'wandb']."""
    return [name.strip() for name in (log_with or "").split(",") if name.strip()]


def parse_overrides(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """`--key=value` or `--key value` pairs from the command line; the rest is returned as problems."""
    values, problems = {}, []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            problems.append(f"command line: unexpected argument '{arg}': overrides are written --key=value")
            i += 1
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                problems.append(f"command line: --{key} needs a value: write --{key}=VALUE")
                i += 1
                continue
            value = args[i + 1]
            i += 1
        values[key.replace("-", "_") if key.replace("-", "_") in KEYS else key] = value
        i += 1
    return values, problems


def load_recipe(path: str | None = None, overrides: list[str] | dict | None = None) -> Recipe:
    """Defaults, then the YAML file at `path`, then the overrides; every problem reported at once."""
    problems: list[str] = []
    layers: list[tuple[str, dict]] = []
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"recipe {path} not found: give the path of a YAML recipe, e.g. recipes/shakespeare_char_cpu.yaml")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"{path}:{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: a recipe is a mapping of key: value lines, got a {type(loaded).__name__}")
        layers.append((str(path), loaded))
    if isinstance(overrides, dict):
        layers.append(("overrides", overrides))
    elif overrides:
        parsed, arg_problems = parse_overrides(list(overrides))
        problems += arg_problems
        layers.append(("command line", parsed))

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
                problems.append(_unknown_key(str(key), where))
                continue
            tp = FIELD_TYPES[key]
            try:
                converted = convert(key, value, tp)
            except (ValueError, TypeError):
                problems.append(f"{where}: {key}={value!r} is not a valid {_type_name(tp)}")
                continue
            setattr(getattr(recipe, KEYS[key]), key, converted)
    if wandb_log and "wandb" not in tracker_names(recipe.log.log_with):
        recipe.log.log_with = ",".join(tracker_names(recipe.log.log_with) + ["wandb"])
    problems += [f"{path or 'recipe'}: {p}" for p in validate(recipe)]
    if problems:
        raise UserError("\n".join(problems))
    return recipe


def recipe_help(prog: str, summary: str) -> str:
    """The --help text: usage, then every key by section with type, default and docstring."""
    lines = [f"usage: {prog} [RECIPE.yaml] [--key=value ...]", "", summary, ""]
    for section, cls in SECTIONS.items():
        lines.append(f"{section}: {cls.__doc__}")
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            lines.append(f"  --{f.name}={f.default!r}  ({_type_name(FIELD_TYPES[f.name])})")
            lines.append(f"      {docs.get(f.name, '')}")
        lines.append("")
    return "\n".join(lines)


def parse_cli(argv: list[str], prog: str, summary: str) -> Recipe | None:
    """`[RECIPE.yaml] [--key=value ...]` -> Recipe; prints help and returns None for -h/--help."""
    if "-h" in argv or "--help" in argv:
        print(recipe_help(prog, summary))
        return None
    path = None
    if argv and not argv[0].startswith("--"):
        path, argv = argv[0], argv[1:]
    return load_recipe(path, argv)
