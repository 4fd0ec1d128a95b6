"""Recipes: typed dataclass sections, filled from a flat YAML file and `--key=value` overrides.

    recipe = load_recipe("recipes/shakespeare_char_cpu.yaml", ["--max_iters=100", "--compile=False"])
    recipe.model.n_layer, recipe.train.out_dir       # each key belongs to exactly one section
    python -m hfgpt.train --help                      # every key of a step with its type, default and meaning

A recipe is flat, with nanoGPT's names, so a nanoGPT config reads as written. Each key is one
field below, declared with `option` (hfgpt.config.options): its default, its rules (choices,
ranges), what it shapes (the token files or the model) and the steps that read it; the
docstring under it is its help. Defaults < YAML < command line. Every problem in a recipe is
collected and reported together, one line each.
"""

import dataclasses
import re
from dataclasses import dataclass, field
from typing import ClassVar

from hfgpt.config.options import option
from hfgpt.core.names import is_url, shown_url

# The trackers Accelerate knows by name (accelerate.tracking.LOGGER_TYPE_TO_CLASS).
TRACKERS = ("tensorboard", "wandb", "aim", "clearml", "comet_ml", "dvclive", "mlflow", "swanlab", "trackio")


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes tokens (python -m hfgpt.prepare)."""

    STEPS: ClassVar = ("prepare", "train")
    dataset: str = option("openwebtext", planned=True)
    """Name of the dataset: its token files, meta.json and tokenizer live in data_dir/dataset/."""
    data_dir: str = option("data")
    """Folder that holds one subfolder per dataset."""
    source: str | list[str] | None = option(None, shapes="data", urls=True)
    """Text to prepare: a text file, folder, glob, .jsonl/.json/.csv/.parquet file, http(s) URL, Hub dataset id or nanoGPT data folder; or a list of these ([a.txt, docs/])."""
    file_glob: str | list[str] = option("**/*.txt", shapes="data")
    """Files a folder source contributes, matched below it (e.g. ['**/*.md', '**/*.py'])."""
    text_column: str = option("text", shapes="data")
    """Column that holds the text in .jsonl/.json/.csv/.parquet files and Hub datasets: one document per row."""
    source_config: str | None = option(None, shapes="data")
    """Configuration (subset) name of a Hub dataset, as load_dataset's second argument."""
    source_split: str = option("train", shapes="data")
    """Split of a Hub dataset to read; validation is carved out of it by val_fraction."""
    streaming: bool = option(False, shapes="data")
    """Read .jsonl/.json/.csv/.parquet and Hub datasets as a stream (no local copy); each document then goes to validation with probability val_fraction."""
    errors: str = option("strict", choices=("strict", "replace", "ignore"), shapes="data")
    """Bytes that are not UTF-8: 'strict' stops with the file and byte offset, 'replace' writes U+FFFD, 'ignore' drops them."""
    tokenizer: str | None = option(None, shapes="data", urls=True)
    """'char' (one id per character, as nanoGPT's shakespeare_char), 'byte' (256 byte ids), 'bpe' (byte-level BPE learned from the training text), 'gpt2', or any Hugging Face tokenizer id or folder; None: the model's own tokenizer when init_from is a model (Hub id or folder), 'char' for a model trained from scratch."""
    vocab_size: int | None = option(None, shapes="data")
    """Number of ids a 'bpe' tokenizer learns (256 bytes + <|endoftext|> + merges); only used with tokenizer: bpe."""
    val_fraction: float = option(0.1, above=0, below=1, shapes="data")
    """Share held out for validation: the last val_fraction of the tokens for one text stream (as nanoGPT), else that share of the documents, picked with seed."""
    shard_size: int = option(100_000_000, min=2, shapes="data")
    """Most tokens per token file; a split larger than this is written as train-00000.bin, train-00001.bin, ..."""
    num_proc: int | None = option(None, min=1)
    """Threads that tokenize in parallel (the tokenizers release the GIL); None uses every core."""


@dataclass
class ModelConfig:
    """The GPT: built from these numbers, or loaded and cropped to block_size."""

    STEPS: ClassVar = ("train",)
    init_from: str = option("scratch", steps=("prepare", "train"), urls=True)
    """'scratch' builds a new model of `architecture`; 'resume' continues the run in out_dir; 'auto' resumes the run in out_dir when it has a checkpoint, else starts from scratch ('auto:MODEL': else starts from MODEL), so one command line is the first start and every restart (a requeued cluster job); otherwise a Hub model id (gpt2, gpt2-medium, user/name, user/name@revision for a branch, tag or commit) or a local model folder, loaded with float32 weights (whatever dtype it stores), whose tokenizer the data is then prepared with (unless tokenizer is set)."""
    architecture: str = option("gpt2", choices=("gpt2", "llama"), shapes="new_model", planned=True)
    """The model init_from: scratch builds: 'gpt2' (nanoGPT's: learned positions, LayerNorm, GELU MLP; a GPT2LMHeadModel) or 'llama' (rotary positions, RMSNorm, SwiGLU MLP, n_kv_head for grouped-query attention; a LlamaForCausalLM). A loaded model keeps its own."""
    n_layer: int = option(12, min=1, shapes="new_model", planned=True)
    """Transformer blocks."""
    n_head: int = option(12, min=1, shapes="new_model", planned=True)
    """Attention heads per block; must divide n_embd."""
    n_embd: int = option(768, min=1, shapes="new_model", planned=True)
    """Width of the residual stream."""
    n_kv_head: int | None = option(None, min=1, shapes="new_model")
    """architecture: llama: key/value heads per block, a divisor of n_head (grouped-query attention: n_head / n_kv_head query heads share each); None: n_head."""
    block_size: int = option(1024, min=1, shapes="model", steps=("prepare", "train"), planned=True)
    """Context length in tokens (the model's n_positions); a loaded model is cropped to it."""
    dropout: float = option(0.0, min=0, below=1, planned=True)
    """Dropout: 0 for pretraining, try 0.1+ for finetuning. gpt2: on embeddings, attention and residuals; llama: on attention (its only dropout); a loaded model: each dropout setting its family has (Llama, Qwen, Mistral: attention_dropout; GPT-NeoX: attention_dropout, hidden_dropout; GPT-2: embd_, attn_, resid_pdrop)."""
    bias: bool = option(True, shapes="model", planned=True)
    """gpt2: False fixes the Linear and LayerNorm biases at zero, as nanoGPT's bias=False (the saved model keeps GPT-2's layout); llama: True adds a bias to every Linear, False (Llama's own) has none; a loaded model: False zeroes and freezes its biases before the first iteration (nothing to do for families without biases)."""
    gradient_checkpointing: bool = option(False)
    """Recompute each transformer block's activations in the backward instead of keeping them (transformers' own checkpointing): far less memory, about a third more compute."""
    lora_r: int = option(0, min=0, shapes="model")
    """Rank of LoRA adapters (through peft) on lora_target_modules: only the adapters train, the loaded model stays frozen; 0 fine-tunes every weight."""
    lora_alpha: float = option(16.0, above=0, finite=True, shapes="model")
    """LoRA scaling: the adapters add (lora_alpha / lora_r) * B @ A to each target weight."""
    lora_dropout: float = option(0.05, min=0, below=1)
    """Dropout on the input of the LoRA adapters (0: none, and less work per step)."""
    lora_target_modules: list[str] | None = option(None, shapes="model")
    """Modules that get LoRA adapters, matched by the last part of their name; None: every linear layer of the transformer blocks (GPT-2: c_attn, c_proj, c_fc; Llama, Qwen, Mistral: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; GPT-NeoX: query_key_value, dense, dense_h_to_4h, dense_4h_to_h), as QLoRA does rather than peft's attention-only defaults."""


@dataclass
class OptimConfig:
    """The optimizer (AdamW, or Muon for the blocks' matrices) and the learning-rate schedule (linear warmup, then cosine or warmup-stable-decay to min_lr)."""

    STEPS: ClassVar = ("train",)
    optimizer: str = option("adamw", choices=("adamw", "muon"), shapes="optimizer", planned=True)
    """'adamw' (nanoGPT's) for every weight; 'muon': Muon (torch.optim.Muon, at muon_lr) for the 2-D weight matrices inside the transformer blocks, AdamW (at learning_rate) for the embeddings, norms and biases."""
    learning_rate: float = option(6e-4, above=0, finite=True, planned=True)
    """Peak learning rate of AdamW (with optimizer: muon, of the embeddings, norms and biases)."""
    muon_lr: float = option(0.02, above=0, finite=True, planned=True)
    """Peak learning rate of the Muon matrices (optimizer: muon), on learning_rate's schedule; scaled per matrix by 0.2 x sqrt(its larger side) (torch's match_rms_adamw), so it reads like an AdamW learning rate. Depends on batch and depth: 0.004-0.008 at 12 x 64 tokens with 4 blocks, 0.02 at 48 x 64 with 1."""
    muon_momentum: float = option(0.95, min=0, below=1, planned=True)
    """Muon's Nesterov momentum; short runs (a few hundred steps) do better with 0.9."""
    weight_decay: float = option(0.1, min=0, finite=True, planned=True)
    """AdamW weight decay, applied to tensors with 2 or more dimensions only (with optimizer: muon, the embeddings; the Muon matrices are not decayed)."""
    beta1: float = option(0.9, min=0, below=1)
    """AdamW beta1."""
    beta2: float = option(0.95, min=0, below=1, planned=True)
    """AdamW beta2."""
    grad_clip: float = option(1.0, min=0, finite=True)
    """Clip the gradient norm at this value; 0 disables clipping."""
    decay_lr: bool = option(True)
    """Decay the learning rate (warmup, then lr_schedule); False keeps it constant at learning_rate."""
    lr_schedule: str = option("cosine", choices=("cosine", "wsd"), planned=True)
    """After the warmup: 'cosine' (nanoGPT's) decays to min_lr at lr_decay_iters; 'wsd' (warmup-stable-decay) holds learning_rate, then decays linearly to min_lr over the last decay_fraction of lr_decay_iters."""
    decay_fraction: float = option(0.4, above=0, max=1, planned=True)
    """With lr_schedule: wsd, the share of lr_decay_iters spent decaying (0.2-0.5 is usual; 0.4 did best in short runs here)."""
    warmup_iters: int = option(2000, min=0, planned=True)
    """Iterations of linear warmup."""
    lr_decay_iters: int = option(600000, min=0, planned=True)
    """Iteration at which the schedule reaches min_lr; usually equal to max_iters."""
    min_lr: float = option(6e-5, min=0, finite=True, planned=True)
    """Floor of the schedule; usually learning_rate / 10."""


@dataclass
class TrainConfig:
    """The training loop: batches, iterations, evaluation and where results go."""

    STEPS: ClassVar = ("train",)
    out_dir: str = option("out", planned=True)
    """Folder for the trained model (a standard Hugging Face model folder) and metrics.jsonl; one run at a time (out_dir/.lock)."""
    overwrite_out_dir: bool = option(False)
    """Let a new run (init_from other than resume) replace another run in out_dir: its model, checkpoints, metrics and plot are removed first; without it such a run stops."""
    batch_size: int = option(12, min=1, planned=True)
    """Windows per micro-batch on each process."""
    gradient_accumulation_steps: int = option(40, min=1, planned=True)
    """Micro-batches per iteration, summed over all processes (the global batch does not change with their number)."""
    max_iters: int = option(600000, min=0, planned=True)
    """Training iterations (optimizer steps)."""
    eval_interval: int = option(2000, min=1, planned=True)
    """Estimate train and val loss, and save when val improves, every this many iterations."""
    eval_iters: int = option(200, min=1, planned=True)
    """Batches per loss estimate."""
    eval_only: bool = option(False)
    """Exit after the first evaluation."""
    log_interval: int = option(1, min=1, planned=True)
    """Log loss, lr and tokens/s every this many iterations (with several processes, also when SIGINT/SIGTERM is acted on)."""
    always_save_checkpoint: bool = option(True, planned=True)
    """Save the model in out_dir at every evaluation, not only when val loss improves."""
    keep_last: int | None = option(2, min=1)
    """Resumable checkpoints kept in out_dir/checkpoints (written at every evaluation); with always_save_checkpoint the best one is kept too (without it, out_dir is the best model); None keeps all."""
    resume_from: str | None = option(None, urls=True)
    """With init_from=resume: the checkpoint folder to continue from, or a Hub repo pushed with hub_strategy=checkpoint (user/name[@revision]: its last-checkpoint/ is downloaded); None takes the newest complete one in out_dir/checkpoints."""
    time_budget: str | None = option(None)
    """Train within this much wall time, e.g. 90s, 2m, 1h30m (the whole python -m hfgpt.train, evaluation and saving included): hfgpt measures this machine and plans every key you did not set (model shape, batch, optimizer and learning rates, schedule, iterations, dropout), prints the plan and writes it into recipe.yaml; a machine slower than measured still ends on time, its learning rate decayed."""
    seed: int = option(1337, min=0, max=2**32 - 1, steps=("prepare", "train"))
    """Seed for initialisation, batches and dropout (each process adds its rank); prepare draws the validation documents with it."""


@dataclass
class SystemConfig:
    """Device, precision and compilation."""

    STEPS: ClassVar = ("train",)
    device: str = option("auto", choices=("auto", "cpu", "cuda", "mps"))
    """'auto' lets Accelerate pick (CUDA, then MPS, then CPU); 'cpu', 'cuda' or 'mps' insist on one."""
    mixed_precision: str = option("auto", choices=("auto", "no", "fp16", "bf16"))
    """'no' (float32), 'fp16' or 'bf16'; 'auto' takes accelerate's config, else bf16 on GPUs that support it and on CPUs with bf16 instructions (AMX, avx512_bf16, ARM bf16+SVE), else fp16 on CUDA, else no."""
    compile: bool | None = option(None)
    """torch.compile the model; None turns it on for CUDA and off on CPU and MPS."""
    threads: int | None = option(None, min=1)
    """CPU threads of a CPU run; None: OMP_NUM_THREADS when set, else the cores free when the run starts (the run says how many it took and why)."""


@dataclass
class LogConfig:
    """Watching a run: trackers and the texts generated at each evaluation (metrics.jsonl and loss.png are always written)."""

    STEPS: ClassVar = ("train",)
    log_with: str | None = option(None)
    """Trackers that receive every log line and evaluation, comma-separated: tensorboard (out_dir/runs/), wandb (out_dir/wandb/), or aim, clearml, comet_ml, dvclive, mlflow, swanlab, trackio; None: metrics.jsonl only."""
    wandb_project: str = option("hfgpt")
    """Project name for the trackers: wandb's project, and tensorboard's folder out_dir/runs/<wandb_project>/."""
    wandb_run_name: str | None = option(None)
    """Name of the run in wandb; None lets wandb pick one."""
    eval_samples: int | None = option(None, min=0)
    """Texts generated at each evaluation, written to metrics.jsonl, the trackers and the model card; None: none at the evaluations (so that they cost no generation) and, on a GPU, one at the end of the run for out_dir's model card, from the model saved there (none on the CPU, where generating slows small runs)."""
    sample_start: str = option("\n")
    """Prompt of the texts generated at each evaluation."""
    sample_max_new_tokens: int = option(200, min=1)
    """Tokens generated per evaluation sample."""


@dataclass
class HubConfig:
    """Sharing the run on the Hugging Face Hub (python -m hfgpt.push OUT_DIR does it for a finished run)."""

    STEPS: ClassVar = ("train",)
    push_to_hub: bool = option(False)
    """Upload out_dir to the Hub repo hub_model_id: in the background while training (see hub_strategy) and, waited for, at the end."""
    hub_model_id: str | None = option(None)
    """The Hub repo, 'user/name' or 'org/name' (created if missing); None: <your user name>/<out_dir's folder name>."""
    hub_private: bool | None = option(None)
    """Create the repo private (True) or public (False); None keeps the Hub's default for you or your org."""
    hub_strategy: str = option("every_save", choices=("end", "every_save", "checkpoint"))
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
        """The flat key -> value form a recipe file uses, as it is saved (recipe.yaml, state.json,
        meta.json, trackers) and shown: URLs without their secrets (option urls=True)."""
        return {k: v for section in SECTIONS for k, v in shown_section(getattr(self, section)).items()}

    def get(self, key: str):
        return getattr(getattr(self, KEYS[key]), key)

    given: ClassVar[frozenset] = frozenset()  # the keys a recipe file or the command line set (the parser records them)


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Recipe)}
KEYS = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
FIELDS = {f.name: f for cls in SECTIONS.values() for f in dataclasses.fields(cls)}


def shown_section(section) -> dict:
    """One section's key -> value, as Recipe.to_dict gives it: URLs without their secrets."""
    return {k: shown_urls(v) if FIELDS[k].metadata.get("urls") else v for k, v in dataclasses.asdict(section).items()}


def shown_urls(value):
    """A value, or each entry of a list, with every URL through shown_url."""
    if isinstance(value, list):
        return [shown_urls(v) for v in value]
    return shown_url(value) if isinstance(value, str) and is_url(value) else value


DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float | None:
    """'90s', '2m', '1h30m', '45' (seconds) -> seconds; None when it is not a duration."""
    match = DURATION.match(str(text).strip().lower())
    if not match or not any(match.groupdict().values()):
        return None
    return 3600 * float(match["h"] or 0) + 60 * float(match["m"] or 0) + float(match["s"] or 0)


AUTO = "auto"


def auto_start(init_from: str) -> str | None:
    """What init_from 'auto' or 'auto:MODEL' starts from when there is no checkpoint to resume
    ('scratch' or MODEL), or None for any other init_from."""
    if init_from == AUTO:
        return "scratch"
    if init_from.startswith(f"{AUTO}:") and init_from[len(AUTO) + 1:] not in ("", "resume", AUTO):
        return init_from[len(AUTO) + 1:]
    return None


def folder_name_problem(name: str) -> str | None:
    """Why `name` is not the name of one folder (dataset: data_dir/NAME), or None."""
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return "is not one folder name"
    return None


def keys_that_shape(what: str) -> tuple[str, ...]:
    """The recipe keys whose change changes the token files ('data') or the model ('model')."""
    return tuple(k for k, f in FIELDS.items() if f.metadata.get("shapes") == what)


def planned_keys() -> tuple[str, ...]:
    """The keys a time budget's plan chooses when the recipe does not set them."""
    return tuple(k for k, f in FIELDS.items() if f.metadata.get("planned"))


def keys_of_step(step: str) -> set[str]:
    """The recipe keys that a step ('prepare', 'train') reads."""
    return {k for k, f in FIELDS.items() if step in (f.metadata.get("steps") or SECTIONS[KEYS[k]].STEPS)}


def tracker_names(log_with: str | None) -> list[str]:
    """'tensorboard, wandb' -> ['tensorboard', 'wandb']."""
    return [name.strip() for name in (log_with or "").split(",") if name.strip()]
