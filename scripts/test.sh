#!/usr/bin/env bash
# Installs dependencies, builds, and runs every test. This is what CI runs.
# The tests read the reference fixtures from ../shared/reference (or
# $CLIPC_REFERENCE). The last line is "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --test
make -j"$(nproc)" all build/test_clipc fuzz-build >/dev/null
# The reference harness too large to commit: OpenCLIP's own random-init
# coca_ViT-B-32 (~500 MB), made in the reference venv (Debian's PyTorch,
# open_clip 2.23 and transformers 4.36.2 from the Python package index).
if [ ! -f build/coca-b32/captions.json ] || [ ! -f build/coca-b32/small/open_clip_pytorch_model.bin ]; then
  [ -x build/ref-venv/bin/python ] || sh tools/ref/setup.sh build/ref-venv
  build/ref-venv/bin/python tools/ref/gen_coca_b32.py build/coca-b32 >/dev/null
fi
CLIPC_COCA_B32=build/coca-b32 make test
