#!/usr/bin/env bash
# The main job on a fresh Debian machine: install dependencies, build, then
# show clipc at work on the sample photos in the reference directory:
# architecture info, tokenization, exact preprocessing, and zero-shot
# classification. (The weights here are the reference's random-init tiny
# model — the probabilities are meaningless until a trained model ships.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
make -j"$(nproc)" >/dev/null
REF=${CLIPC_REFERENCE:-../shared/reference}
MODEL=$REF/tiny/model.safetensors
set -x
build/clipc info "$MODEL"
build/clipc tokenize --ids "A photo of a cat." "don’t ﬁnd the ＡＢＣ"
build/clipc preprocess --size 224 "$REF"/preprocess/images/*.jpg -o /tmp/clipc_demo_pixels.npy
build/clipc classify -m "$MODEL" --labels "cat,coffee,rocket,astronaut" --top 2 "$REF"/preprocess/images/*.jpg
