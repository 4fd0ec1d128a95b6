#!/usr/bin/env bash
# The checks to run on a CUDA GPU, most valuable first, in BUDGET seconds (default 480: 8 minutes,
# so that a start-up and a second try still fit the GPU machine's ~15 minutes). Every step has a
# budget (it is stopped there) and a minimum (it is skipped when less time than that is left);
# STEPS picks and orders them. Figures land as files in OUT ($OUT, else the first argument, else
# gpu-check/): machine.txt, steps.jsonl (each step: exit code, seconds, budget, skipped or not),
# and each step's own files below.
#
#   scripts/gpu_bundle.sh ../nanoGPT                  # first, on a machine with a registry: fills .gpu/
#   scripts/gpu_check.sh [OUT]                        # on the GPU machine, .gpu/ carried along
#   STEPS="bench tests" BUDGET=300 scripts/gpu_check.sh
#   DRY_RUN=1 scripts/gpu_check.sh /tmp/out           # any machine: every step on the CPU at its smallest
#
# step    budget  on an H200 (estimated: no GPU has been lent yet; steps.jsonl gives the real times)
# machine    30   ~5 s    nvidia-smi, torch/transformers/accelerate versions; no CUDA device: exit 3
# bench     200   ~150 s  python -m hfgpt.bench gpu --nanogpt: GPT-2 124M, 12 x 1024 tokens, compiled, bf16,
#                         hfgpt beside nanoGPT's own bench.py (each compiles once, ~45 s, then 30 steps at
#                         ~70 ms): bench-gpu.json (ms/iter, MFU, attention kernels, ratio)
# recipe    180   ~150 s  recipes/shakespeare_char.yaml for RECIPE_ITERS (1000) iterations, and nanoGPT's
#                         train.py config/train_shakespeare_char.py with the same: ~75 s each (5
#                         evaluations of 2 x 200 batches, ~40 s of compile, ~20 ms/iter): recipe.json (wall
#                         seconds, val losses of both), hfgpt's metrics.jsonl
# smoke      90   ~70 s   one-GPU runs through accelerate launch with accelerate_configs/multi_gpu.yaml (DDP)
#                         and fsdp.yaml (FSDP2, blocks compiled, chunked loss): 20 iterations of a 2-layer model
#                         each (~35 s, most of it compile): smoke-ddp.jsonl, smoke-fsdp.jsonl (their metrics), smoke.json
# tests     120   ~150 s  python -m pytest -m gpu tests/test_gpu.py (auto precision, fused attention, pinned
#                         copy, fp16 + scaler and its skipped steps, Muon against torch's, resume): test_gpu.xml,
#                         tests.txt; cut at the budget left (the resume test, last, takes ~75 s)
# total     ~525 s estimated, against a 480 s budget: the tests step gets what is left (~100 s; at least 30).
#
# On the GPU machine lent to this project: here, scripts/gpu_bundle.sh /work/.mirror/karpathy+nanoGPT/repo
# (the fetch tool's copy of github:karpathy/nanoGPT); then the device tool's run with carry [".gpu"],
# timeout_s 540 and the command (OUT set there: the files come back)
#   PYTHON=/opt/torch/.venv/bin/python3 scripts/gpu_check.sh
#
# What the GPU machine lacks (../shared/notes/gpu-machine.md: torch 2.11+cu130, transformers 5.17,
# accelerate 1.15, no datasets, no evaluate, no registry) comes from .gpu/ (GPU_DIR), filled by
# scripts/gpu_bundle.sh: nanoGPT's code and prepared data, hfgpt's prepared tiny Shakespeare (hfgpt's
# train and prepare of a text file import neither datasets nor evaluate), and wheels, of which only
# the distributions the machine does not have are unpacked (into a temporary folder on PYTHONPATH).
# Exit: 0 when every step that ran passed, 1 when one failed, 3 without a CUDA device (DRY_RUN aside).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=$(realpath -m "${OUT:-${1:-gpu-check}}")
GPU=$(realpath -m "${GPU_DIR:-.gpu}")
STEPS=${STEPS:-machine bench recipe smoke tests}
BUDGET=${BUDGET:-480}
DRY=${DRY_RUN:-}
RECIPE_ITERS=${RECIPE_ITERS:-$([ -n "$DRY" ] && echo 4 || echo 1000)}
PY=${PYTHON:-python3}
START=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT" && : > "$OUT/steps.jsonl"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

# the wheels whose distribution this Python lacks, unpacked (a wheel is a zip: no pip needed)
if [ -d "$GPU/whl" ]; then
    $PY - "$GPU/whl" "$WORK/site" <<'EOF' || exit 1
import sys, zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name = wheel.name.split("-")[0]
    try:
        version(name)
    except PackageNotFoundError:
        zipfile.ZipFile(wheel).extractall(sys.argv[2])
        print(f"unpacked {wheel.name}")
EOF
fi
export PYTHONPATH=$REPO:$WORK/site${PYTHONPATH:+:$PYTHONPATH}

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME BUDGET MINIMUM: run the function step_NAME with LIMIT = min(BUDGET, seconds left)
step() {
    local name=$1 budget=$2 minimum=$3 remaining t0 rc
    remaining=$(left)
    if [ "$remaining" -lt "$minimum" ]; then
        echo "== $name: skipped, ${remaining}s of the budget left (needs ${minimum}s)" | tee -a "$OUT/machine.txt"
        echo "{\"step\": \"$name\", \"skipped\": true, \"left_s\": $remaining}" >> "$OUT/steps.jsonl"
        return 0
    fi
    LIMIT=$(( budget < remaining ? budget : remaining ))
    t0=$(date +%s)
    "step_$name" > "$OUT/$name.txt" 2>&1
    rc=$?
    echo "== $name: exit $rc, $(( $(date +%s) - t0 ))s (budget ${LIMIT}s)" | tee -a "$OUT/machine.txt"
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 )), \"budget_s\": $LIMIT}" >> "$OUT/steps.jsonl"
    [ "$rc" -eq 0 ] || status=1
}

limited() {  # limited SECONDS COMMAND...: the command, stopped (TERM, then KILL) after SECONDS
    timeout -k 10 "$1" "${@:2}"
}

step_machine() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    lscpu | grep 'Model name' || true
    limited "$LIMIT" $PY -c "import torch, transformers, accelerate
print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__,
      '| accelerate', accelerate.__version__)
print('cuda device:', torch.cuda.get_device_name() if torch.cuda.is_available() else None)
open('$WORK/cuda', 'w').write(str(torch.cuda.is_available()))"
}

step_bench() {
    local dry=() ; [ -n "$DRY" ] && dry=(--dry_run=true --steps=2 --warmup=1)
    limited "$LIMIT" $PY -m hfgpt.bench gpu --nanogpt="$GPU/nanoGPT" --fp16=false --nanogpt_kernels=false \
        --json="$OUT/bench-gpu.json" "${dry[@]}"
}

# the same overrides for both sides of the recipe step (nanoGPT's names are hfgpt's recipe keys)
recipe_args() {
    echo "--max_iters=$RECIPE_ITERS --lr_decay_iters=$RECIPE_ITERS"
    [ -n "$DRY" ] && echo "--device=cpu --n_layer=1 --n_head=2 --n_embd=32 --block_size=32 --batch_size=4" \
        "--eval_interval=2 --eval_iters=2 --log_interval=1 --warmup_iters=1"
}

step_recipe() {
    local args half t0 hf_s nano_s compile=()
    args=$(recipe_args) half=$(( LIMIT / 2 ))
    [ -n "$DRY" ] && compile=(--compile=false)
    mkdir -p "$WORK/recipe" && cp -r "$GPU/data" "$WORK/recipe/data"
    t0=$(date +%s)
    (cd "$WORK/recipe" && limited "$half" $PY -m hfgpt.train "$REPO/recipes/shakespeare_char.yaml" $args "${compile[@]}" \
        --out_dir="$WORK/recipe/out") || return 1
    hf_s=$(( $(date +%s) - t0 )) t0=$(date +%s)
    cp "$WORK/recipe/out/metrics.jsonl" "$OUT/recipe-metrics.jsonl"
    (cd "$GPU/nanoGPT" && limited $(( LIMIT - hf_s )) $PY train.py config/train_shakespeare_char.py $args \
        ${DRY:+--compile=False --dtype=float32} --out_dir="$WORK/recipe/nano") | tee "$WORK/recipe/nano.txt" || return 1
    nano_s=$(( $(date +%s) - t0 ))
    $PY - "$OUT" "$hf_s" "$nano_s" "$WORK/recipe/nano.txt" <<'EOF'
import json, re, sys
from pathlib import Path
out, hf_s, nano_s, nano = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
hf = [r for r in map(json.loads, (out / "recipe-metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
steps = [(int(i), float(v)) for i, v in re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", nano.read_text())]
result = {"hfgpt": {"wall_s": hf_s, "val_loss": hf[-1]["val_loss"], "best_val_loss": min(r["val_loss"] for r in hf),
                    "evaluations": [[r["iter"], r["val_loss"]] for r in hf]},
          "nanogpt": {"wall_s": nano_s, "val_loss": steps[-1][1], "best_val_loss": min(v for _, v in steps),
                      "evaluations": steps},
          "wall_ratio": round(hf_s / max(nano_s, 1), 3), "note": "wall seconds include start-up, compile and evaluations"}
(out / "recipe.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result))
EOF
}

step_smoke() {
    local config rc=0 each=$(( LIMIT / 2 )) tiny
    mkdir -p "$WORK/smoke" && cp -r "$GPU/data" "$WORK/smoke/data"
    tiny="--n_layer=2 --n_head=2 --n_embd=64 --block_size=64 --batch_size=8 --max_iters=20 --lr_decay_iters=20
          --eval_interval=10 --eval_iters=5 --log_interval=5 --warmup_iters=2"
    [ -n "$DRY" ] && tiny="$tiny --device=cpu --compile=false --n_embd=32 --max_iters=4 --eval_interval=2 --eval_iters=2"
    for config in ddp:multi_gpu fsdp:fsdp; do
        (cd "$WORK/smoke" && limited "$each" $PY -m accelerate.commands.launch -q --config_file \
            "$REPO/accelerate_configs/${config#*:}.yaml" --num_processes 1 -m hfgpt.train \
            "$REPO/recipes/shakespeare_char.yaml" $tiny --out_dir="$WORK/smoke/${config%%:*}") || rc=1
        cp "$WORK/smoke/${config%%:*}/metrics.jsonl" "$OUT/smoke-${config%%:*}.jsonl" 2>/dev/null || rc=1
    done
    $PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
result = {}
for name in ("ddp", "fsdp"):
    path = out / f"smoke-{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    logged = [r["loss"] for r in rows if "loss" in r]
    result[name] = {"rows": len(rows), "first_loss": logged[0] if logged else None, "last_loss": logged[-1] if logged else None,
                    "val_loss": [r["val_loss"] for r in rows if "val_loss" in r]}
(out / "smoke.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result))
EOF
    return $rc
}

step_tests() {
    mkdir -p "$WORK/shared/data/tinyshakespeare"
    cp "$GPU/data/shakespeare_char/input.txt" "$WORK/shared/data/tinyshakespeare/"
    HFGPT_SHARED=$WORK/shared limited "$LIMIT" $PY -m pytest -m gpu tests/test_gpu.py -q -rA -p no:cacheprovider \
        --junitxml="$OUT/test_gpu.xml"
    local rc=$?
    [ "$rc" -eq 124 ] && echo "stopped at the budget: the tests that finished are in test_gpu.xml"
    [ -n "$DRY" ] && [ "$rc" -eq 0 ] && echo "dry run: every GPU test is skipped on the CPU"
    return $rc
}

status=0
for name in $STEPS; do
    case $name in
    machine)
        step machine 30 5
        if [ -z "$DRY" ] && [ "$(cat "$WORK/cuda" 2>/dev/null)" != True ]; then
            echo "error: torch sees no CUDA device (driver >= 580 for torch's CUDA 13 build; nvidia-smi above): nothing to check" \
                | tee -a "$OUT/machine.txt" >&2
            exit 3
        fi ;;
    bench) step bench 200 90 ;;
    recipe) step recipe 180 90 ;;
    smoke) step smoke 90 30 ;;
    tests) step tests 120 30 ;;
    *) echo "error: unknown step '$name' in STEPS: choose from machine bench recipe smoke tests" >&2; exit 2 ;;
    esac
done
echo "done in $(( $(date +%s) - START ))s of ${BUDGET}s; figures in $OUT" | tee -a "$OUT/machine.txt"
exit $status
