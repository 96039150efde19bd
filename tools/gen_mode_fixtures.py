#!/usr/bin/env python3
"""Writes tests/data/modes/: small images in the image modes the shared
reference does not cover (gray+alpha, 16-bit gray, bilevel, CMYK JPEG,
4-bit palette, interlaced RGB), and expected.npy = OpenAI's _transform(32)
of each as computed with Pillow 9.4.0 (the version of the reference):
Resize(32, BICUBIC), CenterCrop(32), convert('RGB'), ToTensor, Normalize.
Dev-time only:  pip install pillow==9.4.0 numpy; python3 tools/gen_mode_fixtures.py
"""
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_transform import transform  # noqa: E402

assert Image.__version__ == "9.4.0", "use Pillow 9.4.0, as the reference does"
ref = sys.argv[1] if len(sys.argv) > 1 else "../shared/reference"
out = "tests/data/modes"
os.makedirs(out, exist_ok=True)
base = Image.open(f"{ref}/preprocess/images/chelsea_451x300.png").convert("RGB").resize((150, 100), Image.BICUBIC)
gray = np.asarray(base.convert("L")).astype(np.uint16)
ramp = Image.fromarray(np.linspace(0, 255, 150)[None, :].repeat(100, 0).astype(np.uint8))
Image.merge("LA", (base.convert("L"), ramp)).save(f"{out}/la.png")
Image.fromarray((gray * 257).astype(np.uint16)).save(f"{out}/gray16.png")          # mode I, mostly > 255
Image.fromarray((gray // 2).astype(np.uint16)).save(f"{out}/gray16_dark.png")      # mode I, within 0..127
base.convert("1").save(f"{out}/bilevel.png")
base.convert("CMYK").save(f"{out}/cmyk.jpg", quality=90)
base.convert("P", palette=Image.ADAPTIVE, colors=16).save(f"{out}/palette4.png", bits=4)
base.resize((20, 30)).save(f"{out}/upscale_interlaced.png", interlace=1)
files = ["la.png", "gray16.png", "gray16_dark.png", "bilevel.png", "cmyk.jpg", "palette4.png", "upscale_interlaced.png"]

np.save(f"{out}/expected_32.npy", np.stack([transform(f"{out}/{f}", 32) for f in files]).astype(np.float32))
with open(f"{out}/files.txt", "w") as fh:
    fh.write("\n".join(files) + "\n")
for f in files:
    print(f, Image.open(f"{out}/{f}").mode)
