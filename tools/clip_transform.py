"""OpenAI's CLIP _transform(n) with Pillow, for the fixture scripts in tools/:
Resize(n, BICUBIC), CenterCrop(n), convert('RGB'), ToTensor, Normalize."""
import numpy as np
from PIL import Image

mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def transform(path, n):
    im = Image.open(path)
    w, h = im.size
    size = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
    im = im.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - n) / 2.0)), int(round((size[1] - n) / 2.0))
    arr = np.asarray(im.crop((left, top, left + n, top + n)).convert("RGB")).astype(np.float32) / 255.0
    return ((arr - mean) / std).transpose(2, 0, 1)
