"""Tokenizing speed and peak memory of `python -m hfgpt.prepare`, on your text or a generated corpus.

    python -m hfgpt.bench prepare recipes/my_dataset.yaml --source=big.txt --tokenizer=gpt2
    python -m hfgpt.bench prepare RECIPE --tokenizer=gpt2 --corpus_mb=2000 --corpus_format=txt --corpus_from=input.txt
    python -m hfgpt.bench prepare RECIPE --tokenizer=GPT2_DIR --corpus_mb=500 --corpus_from=input.txt --compare_tiktoken --pairs=3

Each run is a fresh `python -m hfgpt.prepare` in a child process (into DATASET-bench, removed
first): tokens/s is all its tokens over its wall time, start-up included; peak RSS is the largest
resident size of the child and its descendants, as `/usr/bin/time -v` reports it, and the total
is the sum of their proportional set sizes, sampled every 0.1 s (from /proc: Linux only).

--corpus_mb=N writes a corpus of about N MB into --corpus_dir (kept for later runs; delete it
when done): documents of 20-200 random lines of --corpus_from (a text file), as .jsonl
(`{"text": ...}` per line) or as one .txt stream. --compare_tiktoken (GPT-2 tokenizer, .jsonl)
alternates each hfgpt run with nanoGPT's openwebtext approach on the same corpus
(hfgpt.bench.tiktoken_map: tiktoken encode_ordinary inside datasets.map with the same num_proc),
checks that both wrote the same token ids, and reports hfgpt's tokens/s over the approach's per pair.
"""

import json
import os
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hfgpt.bench import child_env, measure, report
from hfgpt.config import Command, Parsed, command, option
from hfgpt.core.errors import UserError
from hfgpt.core.device import usable_cpus
from hfgpt.data.nanogpt_data import same_tokens
from hfgpt.data.spec import data_spec

@dataclass
class BenchPrepareOptions:
    corpus_mb: int | None = option(None, min=1)
    """Write a corpus of about this many MB (into corpus_dir, kept for later runs) and measure on it."""
    corpus_format: str = option("jsonl", choices=("jsonl", "txt"))
    """The generated corpus: .jsonl documents ({"text": ...} per line) or one .txt stream."""
    corpus_from: str | None = option(None)
    """Text file whose lines make the generated corpus; None: the recipe's source."""
    corpus_dir: str = option("data/bench-corpus")
    """Where generated corpora are kept."""
    compare_tiktoken: bool = option(False)
    """Alternate each run with nanoGPT's tiktoken + datasets.map approach (GPT-2 tokenizer, .jsonl corpus)."""
    gpt2_dir: str | None = option(None)
    """GPT-2's encoder.json + vocab.bpe (or vocab.json + merges.txt) for --compare_tiktoken; None: the recipe's tokenizer."""
    pairs: int = option(1, min=1)
    """Runs (with --compare_tiktoken: pairs of runs)."""
    json: str | None = option(None)
    """Write the result here as JSON."""


def make_corpus(path: Path, mb: int, seed_text: Path, fmt: str, seed: int = 0) -> Path:
    """About mb MB of documents made of random lines of seed_text, written through a temporary name."""
    if path.exists():
        return path
    lines = [line for line in seed_text.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    written, target = 0, mb * 1_000_000
    with open(tmp, "w", encoding="utf-8") as f:
        while written < target:
            picks = rng.integers(0, len(lines), size=(1000, 200))
            for row, n in zip(picks, rng.integers(20, 201, size=1000)):
                doc = "\n".join(lines[i] for i in row[:n])
                record = json.dumps({"text": doc}) + "\n" if fmt == "jsonl" else doc + "\n\n"
                f.write(record)
                written += len(record)
    os.replace(tmp, path)
    return path


def run_hfgpt(rest: list[str], corpus: Path, out: Path, env: dict) -> tuple[dict, dict]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "hfgpt.prepare", *rest, f"--source={corpus}", f"--dataset={out.name}"]
    result = measure(cmd, env)
    meta = json.loads((out / "meta.json").read_text())
    result["tokens"] = meta["train_tokens"] + meta["val_tokens"]
    return result, meta


def run_tiktoken_map(corpus: Path, out: Path, gpt2_dir: str, num_proc: int, val_ids: Path, env: dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "hfgpt.bench.tiktoken_map", str(corpus), str(out), f"--gpt2_dir={gpt2_dir}",
           f"--num_proc={num_proc}", f"--val_ids={val_ids}"]
    return measure(cmd, env)


@command(Command("bench prepare", __doc__.split("\n\n")[0], options=BenchPrepareOptions, recipe_step="prepare"))
def main(parsed: Parsed) -> int:
    recipe, flags, rest = parsed.recipe, parsed.options, parsed.recipe_argv
    d = recipe.data
    corpus = Path(str(d.source)) if d.source is not None else None
    if flags.corpus_mb:
        seed_text = Path(flags.corpus_from or str(d.source))
        if not seed_text.is_file():
            raise UserError(f"--corpus_mb needs --corpus_from=TEXT_FILE to draw lines from (got {seed_text})")
        name = f"corpus-{flags.corpus_mb}mb.{flags.corpus_format}"
        corpus = make_corpus(Path(flags.corpus_dir) / name, flags.corpus_mb, seed_text, flags.corpus_format)
    if corpus is None:
        raise UserError("no text to measure: set --source=FILE or --corpus_mb=N --corpus_from=FILE")
    num_proc = d.num_proc or usable_cpus()
    out = Path(d.data_dir) / f"{d.dataset}-bench"
    env = child_env()
    result = {"corpus": str(corpus), "corpus_bytes": corpus.stat().st_size, "tokenizer": data_spec(recipe).tokenizer,
              "num_proc": num_proc}
    if flags.compare_tiktoken:
        result.update(compare(rest, corpus, out, flags, num_proc, recipe, env))
    else:
        runs = [run_hfgpt(rest, corpus, out, env)[0] for _ in range(flags.pairs)]
        best = min(runs, key=lambda r: r["seconds"])
        result.update({"tokens": best["tokens"], "seconds": best["seconds"], "tokens_per_sec": best["tokens"] / best["seconds"],
                       "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                       "peak_pss_total_mb": max(r["peak_pss_total_mb"] for r in runs)})
    report(result, flags.json)
    return 0


def compare(rest, corpus: Path, out: Path, flags: dict, num_proc: int, recipe, env) -> dict:
    """Alternate hfgpt and the tiktoken + datasets.map approach; the ratio of tokens/s per pair."""
    from hfgpt.data.prepare import val_documents

    gpt2_dir = flags.gpt2_dir or data_spec(recipe).tokenizer
    if not Path(gpt2_dir).is_dir() or flags.corpus_format != "jsonl":
        raise UserError("--compare_tiktoken needs a .jsonl corpus and GPT-2's files: --gpt2_dir=DIR (encoder.json + "
                        "vocab.bpe, or vocab.json + merges.txt), or --tokenizer=DIR with them")
    pairs = []
    for _ in range(flags.pairs):
        ours, meta = run_hfgpt(rest, corpus, out, env)
        n_docs = meta["documents"]["train"] + meta["documents"]["val"]
        is_val = val_documents(n_docs, recipe.data.val_fraction, recipe.train.seed)
        chosen = np.flatnonzero([is_val(i) for i in range(n_docs)])
        np.save(out.with_name(out.name + "-val.npy"), chosen)
        theirs = run_tiktoken_map(corpus, out.with_name(out.name + "-tiktoken"), gpt2_dir, num_proc,
                                  out.with_name(out.name + "-val.npy"), env)
        identical = same_tokens(out, meta, out.with_name(out.name + "-tiktoken"))
        pairs.append({"hfgpt_s": round(ours["seconds"], 2), "tiktoken_map_s": round(theirs["seconds"], 2),
                      "ratio": round(theirs["seconds"] / ours["seconds"], 3), "identical_ids": identical,
                      "hfgpt_peak_rss_mb": round(ours["peak_rss_mb"]), "tiktoken_map_peak_rss_mb": round(theirs["peak_rss_mb"]),
                      "hfgpt_pss_total_mb": round(ours["peak_pss_total_mb"]),
                      "tiktoken_map_pss_total_mb": round(theirs["peak_pss_total_mb"])})
        print(f"pair {len(pairs)}: {pairs[-1]}", flush=True)
    shutil.rmtree(out.with_name(out.name + "-tiktoken"), ignore_errors=True)
    tokens = meta["train_tokens"] + meta["val_tokens"]
    return {"tokens": tokens, "pairs": pairs, "median_ratio": statistics.median(p["ratio"] for p in pairs),
            "hfgpt_tokens_per_sec": tokens / min(p["hfgpt_s"] for p in pairs),
            "tiktoken_map_tokens_per_sec": tokens / min(p["tiktoken_map_s"] for p in pairs),
            "identical_ids": all(p["identical_ids"] for p in pairs)}
