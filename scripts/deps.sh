#!/usr/bin/env bash
# Installs clipc's build dependencies from Debian (needs root or sudo).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PACKAGES=(
  build-essential pkg-config
  libopenblas-openmp-dev   # GEMMs; the OpenMP build shares clipc's thread pool
  libdnnl-dev              # oneDNN: the bf16 and int8 GEMMs (AMX, AVX512-BF16/VNNI, AVX2)
  libjpeg62-turbo-dev      # JPEG decoding, the decoder Pillow uses
  libpng-dev zlib1g-dev    # PNG decoding; zlib also inflates the built-in BPE vocabulary
  libtiff-dev libwebp-dev  # TIFF and WebP decoding, the libraries Pillow uses
  libcjson-dev             # safetensors headers, config.json
  libzip-dev               # PyTorch checkpoints (torch.save's zip archives)
  libcurl4-openssl-dev libssl-dev  # clipc pull: downloads, SHA-256
  libutf8proc-dev          # Unicode categories, case mapping, NFC/NFKC for the tokenizer
  liblbfgs-dev             # L-BFGS for the linear probe's logistic regression
  dataset-fashion-mnist    # the training data of `clipc train --data fashion-mnist`
  openmpi-bin libopenmpi-dev  # data-parallel training: mpirun -np N clipc train ...
  libsqlite3-dev           # the image index (clipc index/search)
  libfaiss-dev             # approximate search (clipc search --ann)
  libsentencepiece-dev     # SigLIP's and SigLIP 2's SentencePiece tokenizers
  libmicrohttpd-dev        # clipc serve
)
# `deps.sh --test` adds what only the tests use: headless Chromium for the
# web page's end-to-end test, clang and its libFuzzer runtime for the fuzz
# targets, Debian's PyTorch for the reference venv (tools/ref/setup.sh)
# in which scripts/test.sh has OpenCLIP make a full-size coca_ViT-B-32, and
# groff to check that the man page renders.
if [ "${1:-}" = "--test" ]; then
  PACKAGES+=(chromium clang libclang-rt-14-dev python3-venv python3-torch python3-torchvision groff-base)
fi
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
