#!/usr/bin/env bash
# The checks that need a CUDA GPU, in the order to run them (about 7 minutes on one H100/H200 for
# the default steps, most of it torch.compile; shakespeare about 3 more):
#
#   scripts/gpu_check.sh [OUT]                       # STEPS="tests bench" (default)
#   STEPS="shakespeare" scripts/gpu_check.sh [OUT]   # the GPU recipe end to end, timed
#
#   tests        python -m pytest -m gpu tests/test_gpu.py: auto precision and MFU peak, the attention
#                kernel of a compiled bf16 step (flash/cuDNN), pinned batch copy, fp16 + loss scaler,
#                resume exact enough with float32 weights saved
#   bench        python -m hfgpt.bench gpu --nanogpt=$NANOGPT: GPT-2 124M, hfgpt beside nanoGPT's own
#                bench.py: ms/iter, tokens/s, MFU, attention kernels of both, hfgpt in fp16
#   shakespeare  python -m hfgpt.train recipes/shakespeare_char.yaml: val loss and minutes (nanoGPT's
#                README: 1.4697 in about 3 minutes on an A100); NANOGPT_TOO=1 also runs nanoGPT's
#                train.py config/train_shakespeare_char.py on the same GPU
#
# Everything lands in OUT (default gpu-check/): machine.txt, test_gpu.txt, bench-gpu.json and .txt,
# shakespeare.txt. Environment: NANOGPT (a nanoGPT clone, default ../nanoGPT), HFGPT_SHARED (tiny
# Shakespeare and GPT-2's BPE files, default ../shared), WHEELS (a folder of wheels to install first,
# e.g. transformers==5.24.0 where the machine has another version; installed into /tmp/site).
#
# On a machine that cannot see ../nanoGPT or ../shared (a copy of the repository only), put them in
# an ignored folder and point the variables there, e.g. from the repository root:
#   echo /.gpu/ >> .git/info/exclude && mkdir -p .gpu/shared/data/tinyshakespeare
#   cp -r ../nanoGPT .gpu/nanoGPT && rm -rf .gpu/nanoGPT/.git .gpu/nanoGPT/assets
#   cp ../shared/data/tinyshakespeare/input.txt .gpu/shared/data/tinyshakespeare/ && cp -r ../shared/gpt2 .gpu/shared/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/whl transformers==5.24.0
# and run NANOGPT=.gpu/nanoGPT HFGPT_SHARED=.gpu/shared WHEELS=.gpu/whl scripts/gpu_check.sh $OUT
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
STEPS=${STEPS:-tests bench}
REPO=$PWD
NANOGPT=$(realpath -m "${NANOGPT:-../nanoGPT}")
export HFGPT_SHARED=$(realpath -m "${HFGPT_SHARED:-../shared}")
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
mkdir -p "$OUT"
OUT=$(realpath -m "$OUT")
PY=${PYTHON:-python3}
if [ -n "${WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    lscpu | grep 'Model name'
    $PY -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, '|',
torch.cuda.get_device_name(), torch.cuda.get_device_capability(), '| transformers', transformers.__version__,
'| accelerate', accelerate.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

for step in $STEPS; do
    start=$(date +%s)
    case $step in
    tests)
        $PY -m pytest -m gpu tests/test_gpu.py -q -rA -p no:cacheprovider 2>&1 | tee "$OUT/test_gpu.txt" || status=1 ;;
    bench)
        $PY -m hfgpt.bench gpu --nanogpt="$NANOGPT" --json="$OUT/bench-gpu.json" 2>&1 | tee "$OUT/bench-gpu.txt" || status=1 ;;
    shakespeare)
        work=$(mktemp -d)
        mkdir -p "$work/data/shakespeare_char" && cp "$HFGPT_SHARED/data/tinyshakespeare/input.txt" "$work/data/shakespeare_char/"
        t0=$(date +%s)
        (cd "$work" && $PY -m hfgpt.train "$REPO/recipes/shakespeare_char.yaml" --out_dir="$work/out") 2>&1 |
            grep -E "^iter [0-9]+: train loss|^done|error" | tee "$OUT/shakespeare.txt" || status=1
        echo "hfgpt shakespeare_char: $(( $(date +%s) - t0 )) s wall, data preparation and compile included" | tee -a "$OUT/shakespeare.txt"
        if [ -n "${NANOGPT_TOO:-}" ]; then
            cp "$HFGPT_SHARED/data/tinyshakespeare/input.txt" "$NANOGPT/data/shakespeare_char/"
            (cd "$NANOGPT" && $PY data/shakespeare_char/prepare.py > /dev/null) || status=1
            t0=$(date +%s)
            (cd "$NANOGPT" && $PY train.py config/train_shakespeare_char.py --out_dir="$work/nano") 2>&1 |
                grep -E "^step [0-9]+:" | tee -a "$OUT/shakespeare.txt" || status=1
            echo "nanoGPT shakespeare_char: $(( $(date +%s) - t0 )) s wall, compile included" | tee -a "$OUT/shakespeare.txt"
        fi ;;
    *) echo "unknown step $step (tests, bench, shakespeare)"; status=2 ;;
    esac
    echo "== $step: $(( $(date +%s) - start )) s" | tee -a "$OUT/machine.txt"
done
exit $status
