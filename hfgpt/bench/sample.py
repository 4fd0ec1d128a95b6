"""python -m hfgpt.bench sample: generation speed of hfgpt.sample, optionally beside nanoGPT's.

    python -m hfgpt.bench sample out-shakespeare-char --max_new_tokens=256
    python -m hfgpt.bench sample out-shakespeare-char --max_new_tokens=500 --nanogpt=../nanoGPT --repeats=5

Times hfgpt.model.generate.generate (the text-generation pipeline with its KV cache inside block_size,
nanoGPT's sliding window past it) for --num_samples samples of exactly --max_new_tokens tokens
(end-of-text does not stop them here), --repeats times, and reports the median tokens/s. With
--nanogpt=DIR the same weights, converted in memory to nanoGPT's layout (hfgpt.model.nanogpt), are
loaded into nanoGPT's own GPT from DIR/model.py, and its generate (what sample.py calls) is timed
in turn, alternating with hfgpt's; the JSON then has both figures and their ratio.
"""

import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hfgpt.bench import nanogpt_classes, report
from hfgpt.config import Command, Parsed, command, option
from hfgpt.sample import SampleOptions


def nanogpt_generate(pipe, repo: Path):
    """nanoGPT's GPT from its clone, holding the pipeline model's weights; returns its generate."""
    from hfgpt.model.nanogpt import nanogpt_checkpoint_from_hf

    GPT, GPTConfig = nanogpt_classes(repo)
    ckpt = nanogpt_checkpoint_from_hf(pipe.model)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model.eval().to(pipe.model.device)


@dataclass
class BenchSampleOptions(SampleOptions):
    num_samples: int = option(1, min=1)
    """Samples per timed repeat."""
    max_new_tokens: int = option(256, min=1)
    """Tokens generated per sample (end-of-text does not stop them here)."""
    repeats: int = option(5, min=1)
    """Timed repeats; the median is reported."""
    nanogpt: str | None = option(None)
    """A nanoGPT clone, to time its generate beside hfgpt's."""
    json: str | None = option(None)
    """Write the result here as JSON."""


@command(Command("bench sample", __doc__.split("\n\n")[0], options=BenchSampleOptions))
def main(parsed: Parsed) -> int:
    args = parsed.options
    import torch
    from transformers import set_seed

    from hfgpt.model.generate import encode_prompt, generate, load_pipeline

    pipe = load_pipeline(args.model, args.device)
    pipe.model.generation_config = copy.deepcopy(pipe.model.generation_config)
    pipe.model.generation_config.eos_token_id = None  # exactly max_new_tokens per sample, as nanoGPT
    tokens = args.num_samples * args.max_new_tokens
    nano = None
    if args.nanogpt:
        nano = nanogpt_generate(pipe, Path(args.nanogpt))
        prompt = torch.tensor([encode_prompt(pipe.tokenizer, args.start)], device=pipe.model.device)

    def ours() -> float:
        start = time.perf_counter()
        generate(pipe, args.start, args.num_samples, args.max_new_tokens, args.temperature, args.top_k)
        return tokens / (time.perf_counter() - start)

    def theirs() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(args.num_samples):  # sample.py draws its samples one by one
                nano.generate(prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k)
        return tokens / (time.perf_counter() - start)

    set_seed(args.seed)
    ours()  # warm-up
    rates = {"hfgpt": [], "nanogpt": []}
    for _ in range(args.repeats):
        rates["hfgpt"].append(ours())
        if nano is not None:
            rates["nanogpt"].append(theirs())
    result = {"hfgpt_tokens_per_sec": round(statistics.median(rates["hfgpt"]), 1),
              "max_new_tokens": args.max_new_tokens, "num_samples": args.num_samples,
              "block_size": getattr(pipe.model.config, "n_positions", None), "device": pipe.model.device.type}
    if nano is not None:
        result["nanogpt_tokens_per_sec"] = round(statistics.median(rates["nanogpt"]), 1)
        result["ratio"] = round(result["hfgpt_tokens_per_sec"] / result["nanogpt_tokens_per_sec"], 2)
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
