#!/usr/bin/env bash
# The Python packages bench/gpu_step.py needs that the GPU machine's image lacks, as wheels.
#
#   here, once:      bash bench/gpu_prepare.sh download   # into bench/wheels/ (git-ignored)
#   on the machine:  bash bench/gpu_prepare.sh install    # into /tmp/site; then PYTHONPATH=/tmp/site:.
#
# The image (Python 3.12, torch, triton, transformers, nvcc, ninja) has the rest. nerfacc
# JIT-compiles its CUDA extension on first use into TORCH_EXTENSIONS_DIR (gpu_step.py makes
# that bench/.cache/torch_extensions); install dates nerfacc's sources in the past, so that a
# build carried back from an earlier run counts as up to date and is loaded, not rebuilt.
set -euo pipefail
cd "$(dirname "$0")"
PACKAGES=(diffusers==0.42.1 nerfacc==0.5.3)
case "${1:-}" in
download)
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d wheels "${PACKAGES[@]}"
    du -sh wheels
    ;;
install)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site wheels/*.whl
    find /tmp/site/nerfacc -type f -exec touch -d 2000-01-01 {} +
    ;;
*)
    echo "usage: bash bench/gpu_prepare.sh download|install" >&2
    exit 2
    ;;
esac
