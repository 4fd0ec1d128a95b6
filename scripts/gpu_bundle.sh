#!/usr/bin/env bash
# Fill the ignored folder .gpu/ with what scripts/gpu_check.sh needs on a GPU machine that has no
# package registry and no network (../shared/notes/gpu-machine.md): run it here, where both are,
# then carry .gpu/ along (at most 64 MiB; this makes ~30 MB: the wheels 24 MB, hfgpt's prepared data
# and nanoGPT with its own 3 MB each).
#
#   scripts/gpu_bundle.sh NANOGPT_CLONE [TINY_SHAKESPEARE]      # default ../shared/data/tinyshakespeare/input.txt
#   scripts/gpu_bundle.sh /work/.mirror/karpathy+nanoGPT/repo    # a bare git directory works too (the fetch tool's)
#   BUNDLE="data" scripts/gpu_bundle.sh NANOGPT_CLONE FILE      # only some parts: nanogpt data wheels
#
#   nanogpt  .gpu/nanoGPT/: the clone's code as git archive gives it (no .git, no assets/), with its
#            data/shakespeare_char/ prepared by its own prepare.py (train.bin, val.bin, meta.pkl).
#            nanoGPT's code is never committed here: .gpu/ is in .gitignore.
#   data     .gpu/data/shakespeare_char/: tiny Shakespeare prepared by python -m hfgpt.prepare
#            recipes/shakespeare_char.yaml (train.bin, val.bin, meta.json, tokenizer/, input.txt).
#            Preparing a text file needs neither `datasets` nor `evaluate` (the GPU image has
#            neither; the dry-run test blocks both), but done here the GPU spends no second on it.
#   wheels   .gpu/whl/: the wheels the GPU image may lack, for its Python 3.12 on x86_64, at the
#            versions installed here (the newest where one is not): matplotlib and its dependencies (loss.png), pytest and its
#            own (the GPU tests). gpu_check.sh unpacks only those whose distribution is missing.
#
# Environment: PYTHON (default python3: the one hfgpt is installed in), GPU_DIR (default .gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
NANOGPT=${1:?usage: scripts/gpu_bundle.sh NANOGPT_CLONE [TINY_SHAKESPEARE]}
NANOGPT=$(realpath "$NANOGPT")
TEXT=$(realpath "${2:-../shared/data/tinyshakespeare/input.txt}")
GPU=$(realpath -m "${GPU_DIR:-.gpu}")
BUNDLE=${BUNDLE:-nanogpt data wheels}
PY=${PYTHON:-python3}
WHEELS="matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing python-dateutil six pytest pluggy iniconfig pytest-timeout"
[ -f "$TEXT" ] || { echo "error: $TEXT not found: give tiny Shakespeare's input.txt as the second argument" >&2; exit 2; }
mkdir -p "$GPU"

for part in $BUNDLE; do
    case $part in
    nanogpt)
        if git -C "$NANOGPT" rev-parse --git-dir > /dev/null 2>&1; then  # a clone, or a bare git directory
            git -C "$NANOGPT" cat-file -e HEAD:train.py 2> /dev/null && git -C "$NANOGPT" cat-file -e HEAD:bench.py ||
                { echo "error: $NANOGPT has no train.py and bench.py: give a clone of karpathy/nanoGPT" >&2; exit 2; }
            rm -rf "$GPU/nanoGPT" && mkdir -p "$GPU/nanoGPT"
            git -C "$NANOGPT" archive HEAD | tar -x -C "$GPU/nanoGPT" --exclude=assets
        else
            [ -f "$NANOGPT/train.py" ] && [ -f "$NANOGPT/bench.py" ] ||
                { echo "error: $NANOGPT has no train.py and bench.py: give a clone of karpathy/nanoGPT" >&2; exit 2; }
            rm -rf "$GPU/nanoGPT" && mkdir -p "$GPU/nanoGPT"
            (cd "$NANOGPT" && tar -c --exclude=.git --exclude=assets .) | tar -x -C "$GPU/nanoGPT"
        fi
        data=$GPU/nanoGPT/data/shakespeare_char
        cp "$TEXT" "$data/input.txt" && chmod u+w "$data/input.txt"
        # its prepare.py imports requests, used only to download input.txt, which is there
        (cd "$data" && $PY -c "import sys, types; sys.modules['requests'] = types.ModuleType('requests'); exec(open('prepare.py').read(), {'__file__': 'prepare.py', '__name__': '__main__'})" > /dev/null)
        rm "$data/input.txt"
        echo "nanogpt: $GPU/nanoGPT ($(git -C "$NANOGPT" rev-parse --short HEAD 2>/dev/null || echo 'not a git clone'))" ;;
    data)
        work=$(mktemp -d)
        mkdir -p "$work/data/shakespeare_char" && cp "$TEXT" "$work/data/shakespeare_char/input.txt"
        (cd "$work" && PYTHONPATH=$REPO $PY -m hfgpt.prepare "$REPO/recipes/shakespeare_char.yaml" > /dev/null)
        rm -rf "$GPU/data" && mkdir -p "$GPU/data" && mv "$work/data/shakespeare_char" "$GPU/data/" && rm -rf "$work"
        echo "data: $GPU/data/shakespeare_char" ;;
    wheels)
        pins=$($PY -c "import sys
from importlib.metadata import PackageNotFoundError, version
def pin(name):
    try:
        return f'{name}=={version(name)}'
    except PackageNotFoundError:  # not installed here: the newest
        return name
print(' '.join(map(pin, sys.argv[1:])))" $WHEELS)
        rm -rf "$GPU/whl" && mkdir -p "$GPU/whl"
        $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d "$GPU/whl" $pins
        echo "wheels: $(ls "$GPU/whl" | wc -l) in $GPU/whl" ;;
    *) echo "error: unknown part '$part' in BUNDLE: choose from nanogpt data wheels" >&2; exit 2 ;;
    esac
done
echo "$(du -sh "$GPU" | cut -f1) in $GPU (carry it: at most 64 MiB)"
