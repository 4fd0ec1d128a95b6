"""Sample from a trained model through transformers' text-generation pipeline.

    python -m hfgpt.sample out-shakespeare-char-cpu --start="ROMEO:"
    python -m hfgpt.sample out-shakespeare-char --start=FILE:prompt.txt --num_samples=3 --max_new_tokens=1000
    python -m hfgpt.sample user/my-model --temperature=1.0 --top_k=50 --seed=7
    python -m hfgpt.sample user/my-model@v1.0 --num_samples=1        # a branch, tag or commit of a Hub repo

The pipeline generates with the KV cache while the text fits in the model's block_size. Past it,
sampling goes on as nanoGPT's does: each new token sees the last block_size tokens, so any
max_new_tokens works with a model of learned positions.
"""

import argparse
import sys
from pathlib import Path

import torch
from transformers import pipeline, set_seed

from hfgpt.checkpoint import SHARDED
from hfgpt.config import LogConfig
from hfgpt.device import device_type
from hfgpt.errors import UserError, cli
from hfgpt.model import n_positions, split_revision


def load_pipeline(model: str, device: str = "auto"):
    """A text-generation pipeline for a model folder or Hub id (user/name@revision too), on the requested device."""
    dev = device_type(device)
    repo, revision = split_revision(model)
    try:
        return pipeline("text-generation", model=repo, device=dev, **({"revision": revision} if revision else {}))
    except OSError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model '{model}' could not be loaded: not a model folder, and not on the Hub or in its cache "
                        f"({reason}); train one with python -m hfgpt.train RECIPE, or give its out_dir") from None


def encode_prompt(tokenizer, start: str) -> list[int]:
    ids = tokenizer(start, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if unk is not None and tokenizer.unk_token != tokenizer.eos_token and unk in ids:
        unknown = sorted({c for c in start if unk in tokenizer(c, add_special_tokens=False)["input_ids"]})
        raise UserError(f"--start has characters the model's tokenizer does not know: {''.join(unknown)!r}; "
                        "leave them out of the prompt")
    if not ids:  # an empty prompt starts a new document
        ids = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
    return ids


@torch.no_grad()
def sample_sliding(model, ids: torch.Tensor, steps: int, block_size: int, temperature: float, top_k: int | None,
                   eos: int | None) -> torch.Tensor:
    """nanoGPT's generate: each step conditions on the last block_size tokens (no cache can help
    here, since every position shifts). Rows that reached eos stay finished."""
    done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    if eos is not None:
        done |= (ids == eos).any(dim=1)
    suppress = list(model.generation_config.suppress_tokens or [])  # padded vocabulary ids
    for _ in range(steps):
        logits = model(input_ids=ids[:, -block_size:], logits_to_keep=1, use_cache=False).logits[:, -1, :].float()
        if suppress:
            logits[:, suppress] = -float("inf")
        logits = logits / max(temperature, 1e-5)
        if top_k:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("inf")
        next_id = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)
        if eos is not None:
            next_id[done] = eos
            done |= next_id.squeeze(1) == eos
        ids = torch.cat((ids, next_id), dim=1)
        if done.all():
            break
    return ids


def generate(pipe, start: str, num_samples: int = 1, max_new_tokens: int = 500, temperature: float = 0.8,
             top_k: int | None = 200) -> list[str]:
    """num_samples continuations of `start`, each with up to max_new_tokens new tokens."""
    tokenizer, model = pipe.tokenizer, pipe.model
    prompt_ids = encode_prompt(tokenizer, start)
    block_size = n_positions(model) or (len(prompt_ids) + max_new_tokens)
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or None}
    if temperature <= 0:
        sampling = {"do_sample": False}

    # with the KV cache, as far as the position table goes
    cached = max(0, min(max_new_tokens, block_size - len(prompt_ids)))
    if cached:
        outputs = pipe(tokenizer.decode(prompt_ids), max_new_tokens=cached,
                       num_return_sequences=num_samples, return_tensors=True, **sampling)
        rows = [o["generated_token_ids"] for o in outputs]
    else:
        rows = [list(prompt_ids)] * num_samples

    # past it, nanoGPT's sliding window, for the rows that have not ended
    rest = max_new_tokens - cached
    open_rows = [i for i, row in enumerate(rows) if eos is None or eos not in row[len(prompt_ids):]]
    if rest > 0 and open_rows:
        ids = torch.tensor([rows[i] for i in open_rows], dtype=torch.long, device=model.device)
        ids = sample_sliding(model, ids, rest, block_size, temperature, top_k, eos)
        for i, row in zip(open_rows, ids.tolist()):
            rows[i] = row
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


@torch.no_grad()
def eval_samples(accelerator, model, tokenizer, log: LogConfig, seed: int) -> list[str]:
    """The texts generated at an evaluation during training (main process; [] elsewhere).

    log.eval_samples of them (None: 1 on a GPU, 0 on the CPU), from log.sample_start, with the
    model's sampling defaults. The random generator is forked and seeded, so the samples are
    reproducible and the training run's own random stream (dropout, resume) is untouched."""
    n = log.eval_samples if log.eval_samples is not None else int(accelerator.device.type != "cpu")
    if n == 0 or not accelerator.is_main_process:
        return []
    if accelerator.distributed_type in SHARDED:
        return []  # the weights are sharded across processes: one process cannot generate alone
    net = accelerator.unwrap_model(model, keep_torch_compile=False)
    devices = [net.device] if net.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        net.eval()
        try:
            pipe = pipeline("text-generation", model=net, tokenizer=tokenizer, device=net.device)
            return generate(pipe, log.sample_start, n, log.sample_max_new_tokens,
                            net.generation_config.temperature or 1.0, net.generation_config.top_k)
        finally:
            net.train()


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m hfgpt.sample", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="out_dir of a training run, any model folder, or a Hub model id")
    p.add_argument("--start", default="\n", help="prompt text, or FILE:path to read it from a file (default: a newline)")
    p.add_argument("--num_samples", type=int, default=10, help="samples to draw (default 10)")
    p.add_argument("--max_new_tokens", type=int, default=500, help="tokens generated per sample (default 500)")
    p.add_argument("--temperature", type=float, default=0.8, help="<1 less random, >1 more; 0 is greedy (default 0.8)")
    p.add_argument("--top_k", type=int, default=200, help="sample from the k likeliest tokens; 0 for all (default 200)")
    p.add_argument("--seed", type=int, default=1337, help="random seed (default 1337)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="where to run (default auto)")
    return p.parse_args(argv)


@cli
def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    start = args.start
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise UserError(f"prompt file {path} not found: give --start=FILE:path/to/prompt.txt")
        start = path.read_text(encoding="utf-8")
    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise UserError(f"--num_samples={args.num_samples} and --max_new_tokens={args.max_new_tokens} must be at least 1")
    set_seed(args.seed)
    pipe = load_pipeline(args.model, args.device)
    for text in generate(pipe, start, args.num_samples, args.max_new_tokens, args.temperature, args.top_k):
        print(text)
        print("---------------")
    return 0


if __name__ == "__main__":
    sys.exit(main())
