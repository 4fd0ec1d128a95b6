"""Checks of a whole recipe: the problems that involve more than one value (parse reports them with
the single values' problems, all at once), and the cautions train prints before it starts.

    problems = validate(recipe)      # ["block_size=2048 is more than ...", ...]: one line each
    notes = cautions(recipe)         # valid but likely not what was meant: printed as warnings
"""

import math

from hfgpt.config.recipe import TRACKERS, Recipe, auto_start, folder_name_problem, parse_duration, tracker_names
from hfgpt.core.names import HUB_ID


def validate(recipe: Recipe) -> list[str]:
    """Problems that involve more than one value (single values are checked by their option's rules)."""
    d, m, o, t = recipe.data, recipe.model, recipe.optim, recipe.train
    problems = []

    def need(ok: bool, message: str):
        if not ok:
            problems.append(message)

    need(t.out_dir.strip() != "", "out_dir is empty: give the folder for the run, e.g. --out_dir=out")
    need(folder_name_problem(d.dataset) is None,
         f"dataset={d.dataset!r} {folder_name_problem(d.dataset)}: the dataset is the folder data_dir/dataset "
         f"({d.data_dir}/NAME); give a name without / or .., e.g. --dataset=shakespeare_char, and point data_dir "
         "elsewhere to keep it in another place")
    start = auto_start(m.init_from) or m.init_from
    need(not (t.overwrite_out_dir and m.init_from == "resume"),
         "overwrite_out_dir=True with init_from=resume: resume continues the run in out_dir, overwrite replaces it; "
         "drop one of them")
    need(not m.lora_r or start != "scratch",
         f"lora_r={m.lora_r} adapts a trained model, but init_from=scratch: set init_from to a model (gpt2-medium, "
         "a folder) or lora_r: 0")
    need(t.resume_from is None or m.init_from == "resume",
         f"resume_from={t.resume_from} is set but init_from='{m.init_from}': set init_from: resume")
    need(m.n_kv_head is None or m.architecture == "llama",
         f"n_kv_head={m.n_kv_head} is for architecture: llama (grouped-query attention); GPT-2's blocks have n_head "
         "key/value heads: remove n_kv_head or set architecture: llama")
    if m.n_kv_head and m.n_head >= 1:
        need(m.n_head % m.n_kv_head == 0,
             f"n_kv_head={m.n_kv_head} does not divide n_head={m.n_head}: pick a divisor of n_head "
             f"({', '.join(str(k) for k in range(1, m.n_head + 1) if m.n_head % k == 0)})")
    if m.n_head >= 1:
        need(m.n_embd % m.n_head == 0,
             f"n_embd={m.n_embd} is not divisible by n_head={m.n_head}: pick n_embd a multiple of n_head "
             f"(e.g. {m.n_head * max(1, round(m.n_embd / m.n_head))})")
        head = m.n_embd // m.n_head
        need(m.architecture != "llama" or m.n_embd % m.n_head or head % 2 == 0,
             f"architecture=llama rotates pairs of each head's {head} dimensions (n_embd / n_head = {m.n_embd} / "
             f"{m.n_head}): pick n_embd and n_head that give an even head size, e.g. n_embd={m.n_head * (head + 1)}")
    if d.tokenizer == "bpe":
        need(d.vocab_size is not None and d.vocab_size >= 258,
             f"tokenizer=bpe needs vocab_size of at least 258 (256 bytes, <|endoftext|> and a merge), got "
             f"{d.vocab_size}: set e.g. --vocab_size=4096")
    else:
        need(d.vocab_size is None, f"vocab_size={d.vocab_size} is only used with tokenizer=bpe, not "
                                   f"tokenizer={d.tokenizer}: remove it (the tokenizer decides its vocabulary)")
    need(d.shard_size > m.block_size, f"shard_size={d.shard_size} must be larger than block_size={m.block_size}: "
                                      "a training window never crosses a shard boundary")
    if o.decay_lr:
        need(not o.min_lr > o.learning_rate,
             f"min_lr={o.min_lr} must be at most learning_rate={o.learning_rate} (or set decay_lr: false)")
        need(o.lr_decay_iters > o.warmup_iters,
             f"lr_decay_iters={o.lr_decay_iters} must be larger than warmup_iters={o.warmup_iters} "
             "(or set decay_lr: false)")
        decay_start = o.lr_decay_iters * (1 - o.decay_fraction)
        need(o.lr_schedule != "wsd" or decay_start >= o.warmup_iters or o.lr_decay_iters <= o.warmup_iters,
             f"decay_fraction={o.decay_fraction} starts the decay at iteration {decay_start:g}, before the warmup "
             f"ends at warmup_iters={o.warmup_iters}: lower decay_fraction to at most "
             f"{math.floor(100 * (1 - o.warmup_iters / max(o.lr_decay_iters, 1))) / 100:g}, or warmup_iters")
    need(o.optimizer != "muon" or not m.lora_r,
         f"optimizer=muon trains the blocks' whole matrices, but lora_r={m.lora_r} trains adapters only: "
         "use optimizer: adamw with LoRA, or lora_r: 0")
    for name in tracker_names(recipe.log.log_with):
        need(name in TRACKERS, f"log_with: '{name}' is not a tracker; choose from {', '.join(TRACKERS)} (comma-separated)")
    if t.time_budget is not None:
        need((parse_duration(t.time_budget) or 0) > 0,
             f"time_budget={t.time_budget!r} is not a duration: write e.g. 90s, 2m or 1h30m")
    hub_id = recipe.hub.hub_model_id
    need(hub_id is None or (HUB_ID.fullmatch(hub_id) is not None and "@" not in hub_id),
         f"hub_model_id='{hub_id}' is not a Hub repo id: write user/name or org/name")
    return problems


def cautions(recipe: Recipe) -> list[str]:
    """Settings that are allowed but probably not meant: printed as warnings when training starts."""
    o, t = recipe.optim, recipe.train
    notes = []
    if o.decay_lr and o.warmup_iters >= t.max_iters > 0:
        notes.append(f"warmup_iters={o.warmup_iters} >= max_iters={t.max_iters}: the learning rate never reaches "
                     f"learning_rate={o.learning_rate:g}; lower warmup_iters (e.g. {max(t.max_iters // 20, 1)})")
    if o.decay_lr and o.warmup_iters < t.max_iters < o.lr_decay_iters:
        notes.append(f"max_iters={t.max_iters} is short of lr_decay_iters={o.lr_decay_iters}: the run stops before the "
                     f"learning rate decays to min_lr={o.min_lr:g}; set lr_decay_iters={t.max_iters} (usually equal)")
    return notes
