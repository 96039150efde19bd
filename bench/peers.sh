#!/usr/bin/env bash
# The peers benchmark (README, "Precision"): PyTorch (Debian's python3-torch)
# and OpenVINO (the Python package index) on the same random ViT-B-32 as
# make bench, interleaved with clipc. Benchmarks only: nothing here is part
# of clipc. Usage: bash bench/peers.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
dpkg-query -W -f='${Status}' python3-torch 2>/dev/null | grep -q "install ok installed" ||
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-torch python3-venv >/dev/null
VENV=${CLIPC_PEERS_VENV:-build/peers-venv}
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q openvino
fi
make -j"$(nproc)" build/clipc build/bench_clipc >/dev/null
"$VENV/bin/python" bench/peers.py "${1:-3}"
