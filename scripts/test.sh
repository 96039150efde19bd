#!/usr/bin/env bash
# Installs dependencies, builds, and runs every test. This is what CI runs.
# The tests read the reference fixtures from ../shared/reference (or
# $CLIPC_REFERENCE). The last line is "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --test
make -j"$(nproc)" all build/test_clipc fuzz-build >/dev/null
make test
