"""python -m hfgpt.bench MODE ...: run one benchmark mode (train, sample, prepare, gpu, evaluation, optim, finetune or race).

    python -m hfgpt.bench train recipes/shakespeare_char_cpu.yaml --json=bench.json
    python -m hfgpt.bench sample out-shakespeare-char --max_new_tokens=256
    python -m hfgpt.bench prepare recipes/my_dataset.yaml
    python -m hfgpt.bench gpu --nanogpt=../nanoGPT --json=bench-gpu.json     # on a CUDA GPU
    python -m hfgpt.bench evaluation recipes/shakespeare_char.yaml --loss_batches=2
    python -m hfgpt.bench optim --optimizer=muon --device=meta
    python -m hfgpt.bench finetune --model=gpt2-medium --block_size=512
    python -m hfgpt.bench race recipes/shakespeare_char_cpu_fast.yaml --nanogpt=../nanoGPT --pairs=3
"""

import importlib
import sys

MODES = {
    "train": "steady-state training step: ms/iter, tokens/s, MFU, peak memory",
    "sample": "generation tokens/s at a given length",
    "prepare": "tokenization throughput and peak memory of prepare",
    "gpu": "GPT-2 124M on a CUDA GPU beside nanoGPT's bench.py: ms/iter, MFU, attention kernels",
    "evaluation": "what one evaluation during training costs beyond its loss estimate (samples, plot, saves, cards)",
    "optim": "ATen ops and host time of one optimizer step (Muon beside torch.optim.Muon) for a GPT-2 shape",
    "finetune": "peak memory and s/iter of full, gradient-checkpointed and LoRA fine-tuning of a GPT-2 config",
    "race": "time to quality: nanoGPT's recipe and an hfgpt recipe as whole processes, wall times and whole-val losses",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: hfgpt bench MODE [ARGS ...]   (hfgpt bench MODE --help for its options)\n"
              "   or: python -m hfgpt.bench MODE [ARGS ...]\n\nmodes:")
        for mode, doc in MODES.items():
            print(f"  {mode:<8} {doc}")
        return 0 if argv else 2
    if argv[0] not in MODES:
        print(f"error: unknown bench mode '{argv[0]}': choose one of {', '.join(MODES)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"hfgpt.bench.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
