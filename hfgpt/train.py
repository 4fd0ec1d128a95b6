"""Train a GPT with one Accelerate loop (hfgpt/training/loop.py).

    hfgpt train recipes/shakespeare_char_cpu.yaml
    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --init_from=resume --max_iters=3000
    python -m hfgpt.train --config recipes/shakespeare_char_cpu.yaml --eval_only=True --init_from=resume
    python -m hfgpt.train recipes/shakespeare_char.yaml --init_from=auto    # resume when it can, else start: a requeued job
    python -m hfgpt.train recipes/shakespeare_char_cpu.yaml --overwrite_out_dir=True   # start over where a run was
    accelerate launch --config_file accelerate_config.yaml -m hfgpt.train recipes/shakespeare_char.yaml
    accelerate launch --multi_gpu --num_processes 2 -m hfgpt.train recipes/shakespeare_char_cpu.yaml  # 2 CPU processes

Prepares the data when needed, builds or loads the model, and trains: random block_size windows,
gradient accumulation, AdamW with warmup + cosine decay, gradient clipping, mixed precision.
Every eval_interval iterations it estimates train and val loss, saves out_dir as a Hugging Face
model folder when val improves (always, with always_save_checkpoint) and writes a resumable
checkpoint to out_dir/checkpoints/. SIGINT, SIGTERM or SIGUSR1 (a cluster's time limit is near)
finish the iteration, checkpoint and exit 130, 143 or 138; init_from=resume continues exactly where
the run stopped, and init_from=auto does so when there is a checkpoint (else it starts), so one
command line is the first start and every restart (scripts/slurm.sbatch). out_dir/metrics.jsonl holds
one JSON object per log line and per evaluation, also sent to the trackers of log_with; loss.png
is redrawn at each evaluation, and every saved model folder gets a README.md model card. With
push_to_hub the saves go to the Hub in the background (hfgpt.hub.push). One run at a time holds
out_dir, and a new run does not replace another run's results there unless overwrite_out_dir is set
(hfgpt.training.out_dir).
"""

import os
import sys
import time

from hfgpt.config import Command, Parsed, cautions, command


@command(Command("train", "Train a GPT on the recipe's dataset (prepares it first if needed).", recipe_step="train"))
def main(parsed: Parsed) -> int:
    started = time.time()
    if os.environ.get("RANK", "0") == "0":  # once, not once per process under accelerate launch
        for note in cautions(parsed.recipe):
            print(f"warning: {note}", file=sys.stderr)
    from hfgpt.training.budget import process_start, start_clock
    from hfgpt.training.loop import train

    start_clock(process_start() if parsed.command_line else started)  # a time budget counts from here
    result = train(parsed.recipe)
    return 128 + result["signal"] if result["signal"] else 0


if __name__ == "__main__":
    sys.exit(main())
