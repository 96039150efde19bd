#!/bin/sh
# tools/ref/setup.sh [VENV] — the venv the fixture generators in tools/ref/ run in: Debian's
# python3-torch and python3-torchvision (system site packages) plus, from the Python package index,
# the reference implementations at the versions the committed fixtures were made with.
#   sudo apt-get install -y python3-venv python3-torch python3-torchvision
#   sh tools/ref/setup.sh /tmp/ref-venv && /tmp/ref-venv/bin/python tools/ref/gen_finetune_refs.py
set -eu
VENV=${1:-/tmp/clipc-ref-venv}
/usr/bin/python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install --quiet transformers==4.36.2 open_clip_torch==2.23.0 timm==0.9.16 ftfy==6.3.1 regex
# OpenAI's CLIP code (clip/model.py); its other requirements (ftfy, regex, tqdm, torch) are above or Debian's
"$VENV/bin/pip" install --quiet --no-deps openai-clip==1.0.1
