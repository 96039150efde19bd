#!/usr/bin/env bash
# The main job on a fresh Debian machine: install the dependencies, build,
# then run the shipped model (models/clipc-fmnist.safetensors, trained by
# clipc itself) on the 10,000 Fashion-MNIST test images:
#   1. zero-shot classification: accuracy, confusion matrix (text and
#      clipc-demo/confusion.svg), CLIP_benchmark JSON (clipc-demo/zeroshot.json);
#   2. text→image retrieval for a few queries (clipc-demo/retrievals.svg).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
make -j"$(nproc)" >/dev/null
OUT=${1:-clipc-demo}
set -x
build/clipc info
build/clipc eval zeroshot --dataset fashion-mnist --out "$OUT"
build/clipc retrieve --dataset fashion-mnist -k 5 --sheet "$OUT/retrievals.svg" \
    "a photo of a sneaker" "a warm winter coat" "a handbag" "a summer dress" "a pair of trousers"
