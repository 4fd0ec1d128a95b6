"""Export a model folder for other runtimes: GGUF, the file llama.cpp, Ollama and LM Studio run.

    hfgpt export gguf out-shakespeare-char-cpu
    python -m hfgpt.export gguf out-shakespeare-char-cpu --out=shakespeare.gguf --outtype=f16
    python -m hfgpt.export gguf user/my-model@v1                  # a Hub model, written to the current folder
    llama-completion -m out-shakespeare-char-cpu/out-shakespeare-char-cpu-f32.gguf -no-cnv -p "ROMEO:"

GPT-2 (GPT2LMHeadModel) and Llama (LlamaForCausalLM) models, with hfgpt's char, byte and bpe
tokenizers or GPT-2's, become GGUF files that llama.cpp tokenizes and samples with the same ids
as transformers (hfgpt.gguf); the GGUF carries the folder's sampling defaults (temperature, top_k).
"""

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from hfgpt.config import Command, Parsed, command, option
from hfgpt.core.errors import UserError
from hfgpt.core.files import size_text, writable_file


@dataclass
class ExportOptions:
    format: str = option(positional=True, choices=("gguf",))
    """What to write: gguf (llama.cpp, Ollama, LM Studio)."""
    model: str = option(positional=True)
    """out_dir of a training run, any model folder, or a Hub model id (user/name[@revision])."""
    out: str | None = option(None)
    """The file to write; None: <model folder>/<its name>-<outtype>.gguf (for a Hub id, in the current folder)."""
    outtype: str = option("f32", choices=("f32", "f16", "bf16"))
    """Weight matrices in float32 (llama.cpp then samples as transformers does), or half the size in f16 or
    bf16; norms and biases stay float32."""


def target(options: ExportOptions, folder: Path, own: bool) -> Path:
    if options.out is None:
        name = f"{folder.resolve().name if own else options.model.split('@')[0].split('/')[-1]}-{options.outtype}.gguf"
        return (folder if own else Path(".")) / name
    return writable_file(Path(options.out), "model.gguf")


@command(Command("export", __doc__.split("\n\n")[0], options=ExportOptions))
def main(parsed: Parsed) -> int:
    options = parsed.options
    if importlib.util.find_spec("gguf") is None:
        raise UserError("hfgpt export gguf needs the gguf package: pip install gguf (or pip install 'hfgpt[gguf]')")
    from hfgpt.evaluation.score import model_folder
    from hfgpt.gguf import write_gguf

    folder, own = model_folder(options.model)
    out = target(options, folder, own)
    facts = write_gguf(folder, out, options.outtype)
    print(f"wrote {out}: llama.cpp's {facts['architecture']}, {facts['vocab_size']:,} ids, a {facts['context']:,}-token "
          f"context, {facts['tensors']} tensors in {options.outtype}, {size_text(facts['bytes'])}")
    print(f"  next: llama-completion -m {out} -no-cnv -p 'ROMEO:'   (llama.cpp), or import it into Ollama or LM Studio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
