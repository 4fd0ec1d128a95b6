"""Scoring a model on the whole of a split: loss, perplexity and bits per character (or byte).

    folder, own = model_folder("out-shakespeare-char-cpu")   # or a Hub id, downloaded
    results = evaluate_model(options, folder)                # python -m hfgpt.eval (hfgpt/eval.py) calls these

Every token of the split is scored exactly once, deterministically: windows of block_size tokens
(the model's context) cut the split in order; with --stride=S < block_size the windows overlap
and each scores only its last S tokens, so every token sees at least block_size - S tokens of
context. The summed losses go through an `evaluate` metric module that ships with hfgpt
(hfgpt/token_loss), which gives loss (nats per token), perplexity, bits per token and bits per
character (char tokenizer) or per UTF-8 byte (any other). The split's tokens are found through
the run's recipe.yaml (data_dir/dataset) or --data_dir/--dataset; --text scores a text file
tokenized with the model's own tokenizer instead. Results go to eval_results.json in the model
folder (for a Hub id: in the current folder, or --out) and into the folder's model card.
"""

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from hfgpt import __version__
from hfgpt.core.device import device_type
from hfgpt.core.errors import UserError
from hfgpt.core.names import is_hub_id, split_revision
from hfgpt.data.batches import load_tokens
from hfgpt.data.meta import meta_problem, read_meta
from hfgpt.data.prepare import dataset_lock
from hfgpt.data.tokenizer import load_tokenizer, vocabulary_mismatch
from hfgpt.core.files import read_json
from hfgpt.core.layout import FACTS
from hfgpt.hub.token import reason
from hfgpt.model.folder import check_model_folder
from hfgpt.model.gpt import n_positions

METRIC = Path(__file__).parent / "token_loss"
LOGITS_BYTES = 1 << 29  # the default batch keeps its float32 logits near 512 MB


def windows(n: int, block_size: int, stride: int):
    """(start, first_scored) of each window over n tokens: the input is tokens[start:start + block_size]
    (shorter only when n <= block_size), its targets are the next tokens, and only targets at index
    >= first_scored count. Together the windows score the targets 1 .. n-1 once each."""
    first = 1
    while first < n:
        end = min(first + (block_size if first == 1 else stride), n)  # targets [first, end)
        yield max(0, end - 1 - block_size), first
        first = end


def unit_lengths(tokenizer, unit: str) -> np.ndarray:
    """Characters (unit='char') or UTF-8 bytes each token id stands for; 0 for special tokens."""
    n = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    byte_level = type(tokenizer.backend_tokenizer.decoder).__name__ == "ByteLevel"
    if unit == "byte" and byte_level:  # each character of a byte-level token is one byte
        pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
        lengths = [len(p) for p in pieces]
    else:
        texts = [tokenizer.decode([i]) for i in range(n)]
        lengths = [len(t) if unit == "char" else len(t.encode("utf-8")) for t in texts]
    return np.array([0 if i in special else lengths[i] for i in range(n)], dtype=np.int64)


def window_batches(shards: list[np.ndarray], block_size: int, stride: int, batch_size: int):
    """Lists of up to batch_size (shard, start, first_scored, length) windows of one length each
    (all are block_size long, except in a shard of block_size tokens or fewer)."""
    batch = []
    for shard in shards:
        for start, first in windows(len(shard), block_size, stride):
            item = (shard, start, first, min(block_size, len(shard) - 1 - start))
            if batch and (len(batch) == batch_size or item[3] != batch[0][3]):
                yield batch
                batch = []
            batch.append(item)
    if batch:
        yield batch


@torch.no_grad()
def score(model, shards: list[np.ndarray], block_size: int, stride: int, batch_size: int, units: np.ndarray,
          device: torch.device):
    """Yield (nll, tokens, units) lists per batch of windows: summed nats, tokens scored, characters or bytes."""
    table = torch.from_numpy(units).to(device)
    total = sum(1 for shard in shards for _ in windows(len(shard), block_size, stride))
    with tqdm(total=total, desc="evaluating", unit="window", dynamic_ncols=True, disable=None) as bar:  # no bar in logs
        for batch in window_batches(shards, block_size, stride, batch_size):
            length = batch[0][3]
            rows = np.stack([shard[start:start + length + 1].astype(np.int64) for shard, start, _, _ in batch])
            window = torch.from_numpy(rows).to(device)
            x, y = window[:, :-1], window[:, 1:]  # (B, T) inputs and the tokens that follow each
            logits = model(input_ids=x, use_cache=False).logits.float()  # (B, T, vocab)
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view(y.shape)
            # target j of a window is token start + 1 + j: it counts from first_scored on
            skip = torch.tensor([first - start - 1 for _, start, first, _ in batch], device=device)
            mask = torch.arange(length, device=device)[None, :] >= skip[:, None]
            yield (nll.double() * mask).sum(1).tolist(), mask.sum(1).tolist(), (table[y] * mask).sum(1).tolist()
            bar.update(len(batch))


def model_folder(model: str) -> tuple[Path, bool]:
    """The local folder of `model` and whether it is the user's own (False: a Hub download in the cache)."""
    if Path(model).is_dir():
        return Path(model), True
    if not is_hub_id(model):
        raise UserError(f"model '{model}' is neither a folder nor a Hub id (user/name): give the out_dir of a run")
    from huggingface_hub import snapshot_download

    repo_id, revision = split_revision(model)
    try:  # the model folder only: not a pushed run's last-checkpoint/ or tensorboard logs
        return Path(snapshot_download(repo_id, revision=revision, ignore_patterns=["last-checkpoint/*", "runs/*"])), False
    except Exception as e:
        raise UserError(f"model '{model}' could not be downloaded from the Hub or found in its cache ({reason(e)}): "
                        "with network access run `hf download " + repo_id + "`, or give a local folder") from None


def split_tokens(options, recipe: dict, tokenizer) -> tuple[list[np.ndarray], str, str]:
    """The token shards to score, what they are (for the results) and the unit ('char' or 'byte')."""
    unit = "char" if recipe.get("tokenizer") == "char" else "byte"
    if options.text:
        path = Path(options.text)
        if not path.is_file():
            raise UserError(f"--text={options.text} not found: give a text file")
        ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        return [np.array(ids, dtype=np.int64)], str(path), unit
    dataset, data_dir = options.dataset or recipe.get("dataset"), options.data_dir or recipe.get("data_dir", "data")
    if not dataset:
        raise UserError(f"{options.model} has no recipe.yaml naming its dataset: give --dataset=NAME (and --data_dir) "
                        "or --text=FILE")
    folder = Path(data_dir) / dataset
    if not folder.is_dir():
        raise UserError(f"{folder}/meta.json not found: prepare the data with python -m hfgpt.prepare RECIPE, or give "
                        "--data_dir/--dataset of prepared data, or --text=FILE")
    with dataset_lock(folder):  # meta.json, tokenizer and token files of one preparation
        meta = read_meta(folder)
        if meta is None:
            raise UserError(f"{meta_problem(folder) or f'{folder}/meta.json not found'}: prepare the data with python -m "
                            "hfgpt.prepare RECIPE, or give --data_dir/--dataset of prepared data, or --text=FILE")
        splits = meta["shards"]
        if options.split not in splits:
            raise UserError(f"--split={options.split}: {folder} has the splits {', '.join(splits)}")
        check_same_vocabulary(folder, meta, tokenizer, options.model)
        shards = load_tokens(folder, meta, options.split).arrays  # windows never cross a shard boundary
    return shards, f"{folder} ({options.split})", "char" if meta["tokenizer"] == "char" else "byte"


def check_same_vocabulary(folder: Path, meta: dict, tokenizer, model: str) -> None:
    """The split's ids must mean what they meant to the model: its tokenizer and the dataset's map the
    same strings to the same ids (as training's resume checks). A dataset prepared again after its text
    changed renumbers a char vocabulary even at the same size: its ids would be scored as other text."""
    data_tok = load_tokenizer(str(folder / "tokenizer"))
    if vocabulary_mismatch(data_tok, meta["tokenizer"], tokenizer, model, folder.name) is None:
        return
    raise UserError(f"{folder} was tokenized with another vocabulary than {model}'s tokenizer ({meta['tokenizer']}: "
                    f"{len(data_tok):,} ids in the data, {len(tokenizer):,} in the model; the same id stands for other "
                    "text, e.g. after the source changed and was prepared again): score the model on the data it was "
                    "trained on, or on a text file with --text=FILE")


def evaluate_model(options, folder: Path) -> dict:
    """Score the model in `folder` as the command line says; the results as eval_results.json holds them."""
    import evaluate
    from transformers import AutoModelForCausalLM

    check_model_folder(str(folder))
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text()) if (folder / "recipe.yaml").is_file() else {}
    tokenizer = load_tokenizer(str(folder))
    device = torch.device(device_type(options.device))
    model = AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
    # windows of the context the model trained on (a rotary model's may be shorter than its own context)
    context = n_positions(model)
    block_size = options.block_size or recipe.get("block_size") or context
    if not block_size:
        raise UserError(f"{options.model} ({model.config.model_type}) has no fixed context: give the window length "
                        "with --block_size=N (e.g. the block_size it was trained with)")
    if context and block_size > context:
        raise UserError(f"--block_size={block_size} must be at most the model's {context} positions")
    stride = options.stride or block_size
    if not 1 <= stride <= block_size:
        raise UserError(f"--stride={options.stride} must be between 1 and block_size={block_size}")
    shards, data, unit = split_tokens(options, recipe, tokenizer)

    metric = evaluate.load(str(METRIC), keep_in_memory=True)
    started = time.time()
    vocab = model.get_output_embeddings().out_features
    batch_size = options.batch_size or max(1, min(256, LOGITS_BYTES // (4 * block_size * vocab)))
    for nll, tokens, units in score(model, shards, block_size, stride, batch_size, unit_lengths(tokenizer, unit), device):
        metric.add_batch(nll=nll, tokens=tokens, units=units)
    results = metric.compute(unit=unit)
    return {"model": options.model, "iter": read_json(folder / FACTS).get("iter"), "data": data, "split": options.split,
            "unit": unit, **results, "block_size": block_size, "stride": stride, "batch_size": batch_size, "device": device.type,
            "seconds": round(time.time() - started, 2), "hfgpt_version": __version__}
