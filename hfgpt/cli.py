"""The `hfgpt` command: one entry point for every step.

    hfgpt prepare recipes/shakespeare_char.yaml
    hfgpt train recipes/shakespeare_char_cpu.yaml --max_iters=500
    hfgpt train --config recipes/shakespeare_char_cpu.yaml
    hfgpt sample out-shakespeare-char-cpu --start="ROMEO:"
    hfgpt eval out-shakespeare-char-cpu
    hfgpt push out-shakespeare-char-cpu --hub_model_id=user/shakespeare-char
    hfgpt export gguf out-shakespeare-char-cpu
    hfgpt --version

`hfgpt STEP ...` is the same as `python -m hfgpt.STEP ...`.
"""

import importlib
import sys

from hfgpt import __version__
from hfgpt.core.errors import ending

COMMANDS = {
    "prepare": "tokenize a recipe's text into token files",
    "train": "train a GPT (prepares the data first if needed)",
    "sample": "generate text from a trained model",
    "eval": "loss, perplexity and bits per character/byte over a whole split",
    "push": "upload a run to the Hugging Face Hub",
    "convert": "convert nanoGPT checkpoints to Hugging Face model folders and back",
    "export": "write a model folder as a GGUF file for llama.cpp, Ollama and LM Studio",
    "bench": "measure training, sampling or preparing speed",
}


def usage() -> str:
    lines = ["usage: hfgpt STEP [ARGS ...]   (hfgpt STEP --help for a step's options)", "       hfgpt --version",
             "", "steps:"]
    lines += [f"  {name:<10} {doc}" for name, doc in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None:  # the `hfgpt` command itself
        try:
            return main(sys.argv[1:])
        finally:
            ending()
    if argv and argv[0] in ("-V", "--version"):
        print(f"hfgpt {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    step, rest = argv[0], argv[1:]
    if step not in COMMANDS:
        print(f"error: unknown step '{step}': choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = "hfgpt.bench.__main__" if step == "bench" else f"hfgpt.{step}"
    return importlib.import_module(module).main(rest)


if __name__ == "__main__":
    sys.exit(main())
