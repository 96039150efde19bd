#!/usr/bin/env python3
"""Writes tests/data/formats/: TIFF and WebP files in the layouts clipc
reads, and what Pillow 9.4.0 (Debian's python3-pil, with Debian's libtiff
4.5.0 and libwebp 1.2.4) makes of them:
  files.txt   one line per file: name width height mode
  rgb.npy     uint8, every file's Image.open(f).convert('RGB') pixels, flat, in file order
  t24.npy     float32 [n, 3, 24, 24], OpenAI's _transform(24) of each
Pillow writes most files; the layouts it cannot write (associated alpha,
min-is-white, 2- and 4-bit samples, tiles, fill order 2, several pages,
YCbCr JPEG) are written here by a small TIFF writer.
Dev-time only: python3 tools/gen_format_fixtures.py [../shared/reference]
"""
import io
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_transform import transform  # noqa: E402

assert Image.__version__ == "9.4.0", "use Pillow 9.4.0, as the reference does"
ref = sys.argv[1] if len(sys.argv) > 1 else "../shared/reference"
out = "tests/data/formats"
os.makedirs(out, exist_ok=True)
base = Image.open(f"{ref}/preprocess/images/chelsea_451x300.png").convert("RGB").resize((48, 32), Image.BICUBIC)
ramp = Image.fromarray(np.linspace(0, 255, 48)[None, :].repeat(32, 0).astype(np.uint8))
rgba = base.copy()
rgba.putalpha(ramp)
files = []


def save(name, im, **kw):
    im.save(f"{out}/{name}", **kw)
    files.append(name)


# ---- TIFF through Pillow (its libtiff writer for the compressed ones) ----
save("rgb_raw.tif", base)
save("rgb_lzw.tif", base, compression="tiff_lzw")
save("rgb_deflate.tif", base, compression="tiff_adobe_deflate")
save("rgb_packbits.tif", base, compression="packbits")
save("rgba_lzw.tif", rgba, compression="tiff_lzw")
save("la.tif", Image.merge("LA", (base.convert("L"), ramp)))
save("gray_deflate.tif", base.convert("L"), compression="tiff_deflate")
save("bilevel_g4.tif", base.convert("1"), compression="group4")
save("palette.tif", base.convert("P", palette=Image.ADAPTIVE, colors=200))
save("cmyk.tif", base.convert("CMYK"), compression="tiff_lzw")


# ---- TIFF layouts Pillow does not write: a minimal little-endian writer ----
def tiff(name, w, h, photometric, bits, samples, data, extra=None, colormap=None, tile=None, fillorder=1,
         compression=1, pages=1, jpeg_tables=None):
    """data: the strip (or list of tiles) bytes, already encoded."""
    chunks = data if isinstance(data, list) else [data]
    tags = {256: (3, [w]), 257: (3, [h]), 258: (3, [bits] * samples), 259: (3, [compression]),
            262: (3, [photometric]), 277: (3, [samples]), 284: (3, [1]), 266: (3, [fillorder])}
    if tile:
        tags[322], tags[323] = (3, [tile[0]]), (3, [tile[1]])
    else:
        tags[278] = (3, [h])
    if extra is not None:
        tags[338] = (3, [extra])
    if colormap is not None:
        tags[320] = (3, colormap)
    if jpeg_tables is not None:
        tags[347] = (7, list(jpeg_tables))
    if photometric == 6:
        tags[530] = (3, [1, 1])  # YCbCr subsampling 1x1
    body = bytearray(b"II*\0\0\0\0\0")
    offsets = []
    for c in chunks:
        offsets.append(len(body))
        body += c
    counts = [len(c) for c in chunks]
    if tile:
        tags[324], tags[325] = (4, offsets), (4, counts)
    else:
        tags[273], tags[279] = (4, offsets), (4, counts)
    first_ifd = None
    prev_next = 4
    for page in range(pages):
        while len(body) % 2:
            body += b"\0"
        entries = sorted(tags.items())
        ifd = len(body)
        struct.pack_into("<I", body, prev_next, ifd)
        first_ifd = first_ifd or ifd
        body += struct.pack("<H", len(entries)) + b"\0" * (12 * len(entries)) + b"\0\0\0\0"
        for i, (tag, (typ, values)) in enumerate(entries):
            size = {3: 2, 4: 4, 7: 1}[typ]
            payload = b"".join(struct.pack({3: "<H", 4: "<I", 7: "<B"}[typ], v) for v in values)
            if len(payload) <= 4:
                value = payload.ljust(4, b"\0")
            else:
                while len(body) % 2:
                    body += b"\0"
                value = struct.pack("<I", len(body))
                body += payload
            struct.pack_into("<HHI4s", body, ifd + 2 + 12 * i, tag, typ, len(values), value)
        prev_next = ifd + 2 + 12 * len(entries)
    with open(f"{out}/{name}", "wb") as f:
        f.write(bytes(body))
    files.append(name)


px = np.asarray(base)
g = np.asarray(base.convert("L"))
a = np.asarray(ramp).astype(np.uint32)
premult = np.concatenate([(px.astype(np.uint32) * a[..., None] // 255).astype(np.uint8), a[..., None].astype(np.uint8)], 2)
tiff("rgba_associated.tif", 48, 32, 2, 8, 4, premult.tobytes(), extra=1)
tiff("rgbx.tif", 48, 32, 2, 8, 4, np.concatenate([px, a[..., None].astype(np.uint8)], 2).tobytes(), extra=0)
tiff("gray_miniswhite.tif", 48, 32, 0, 8, 1, (255 - g).tobytes())


def pack(values, bits, w):
    rows = []
    per = 8 // bits
    for row in values:
        padded = list(row) + [0] * (-len(row) % per)
        rows.append(bytes(sum(v << (8 - bits * (k + 1)) for k, v in enumerate(padded[i:i + per]))
                          for i in range(0, len(padded), per)))
    return b"".join(rows)


tiff("gray2.tif", 48, 32, 1, 2, 1, pack(g >> 6, 2, 48))
tiff("gray4_miniswhite.tif", 48, 32, 0, 4, 1, pack(15 - (g >> 4), 4, 48))
pal16 = base.convert("P", palette=Image.ADAPTIVE, colors=16)
cm = pal16.getpalette()[:48]
colormap = [cm[3 * i] * 257 for i in range(16)] + [cm[3 * i + 1] * 257 for i in range(16)] + [cm[3 * i + 2] * 257 for i in range(16)]
tiff("palette4.tif", 48, 32, 3, 4, 1, pack(np.asarray(pal16), 4, 48), colormap=colormap)
bits1 = (g > 128).astype(np.uint8)
reverse = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))
tiff("bilevel_fill2.tif", 48, 32, 1, 1, 1, pack(bits1, 1, 48).translate(reverse), fillorder=2)
# tiles of 16x16 over 40x30 (partial tiles at the right and bottom edges), deflate-compressed
tiles = []
padded = np.zeros((32, 48, 3), np.uint8)
padded[:30, :40] = px[:30, :40]
for ty in range(0, 30, 16):
    for tx in range(0, 40, 16):
        tiles.append(zlib.compress(padded[ty:ty + 16, tx:tx + 16].tobytes()))
tiff("rgb_tiled.tif", 40, 30, 2, 8, 3, tiles, tile=(16, 16), compression=8)
tiff("two_pages.tif", 48, 32, 2, 8, 3, px.tobytes(), pages=2)
# YCbCr JPEG-in-TIFF (new-style, compression 7), from libjpeg through Pillow: a baseline JPEG
# of the image with 1x1 sampling is a valid strip
buf = io.BytesIO()
base.save(buf, "JPEG", quality=90, subsampling=0)
tiff("ycbcr_jpeg.tif", 48, 32, 6, 8, 3, buf.getvalue(), compression=7)

# ---- WebP ----
save("lossy.webp", base, quality=80)
save("lossless.webp", base, lossless=True)
save("lossy_alpha.webp", rgba, quality=80)
save("lossless_alpha.webp", rgba, lossless=True)
save("animated.webp", base, save_all=True, append_images=[base.transpose(Image.FLIP_LEFT_RIGHT)], duration=100)

rgb, lines = [], []
for f in files:
    im = Image.open(f"{out}/{f}")
    lines.append(f"{f} {im.size[0]} {im.size[1]} {im.mode}")
    rgb.append(np.asarray(im.convert("RGB")).reshape(-1))
np.save(f"{out}/rgb.npy", np.concatenate(rgb).astype(np.uint8))
np.save(f"{out}/t24.npy", np.stack([transform(f"{out}/{f}", 24) for f in files]).astype(np.float32))
with open(f"{out}/files.txt", "w") as fh:
    fh.write("\n".join(lines) + "\n")
print("\n".join(lines))
