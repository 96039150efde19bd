#!/usr/bin/env python3
"""bench/peers.py — clipc against the engines users would pick instead, in
one interleaved run on the same random ViT-B-32 weights.

Peers: PyTorch fp32, PyTorch bf16 autocast, OpenVINO at its default
precision (bf16 on CPUs with AMX or AVX512-BF16) and OpenVINO fp32. The
model is OpenAI's CLIP architecture written out below (clip/model.py's
VisionTransformer and text tower), loaded from the safetensors file that
`clipc init --arch ViT-B-32 --seed 1` writes, which is the model
`make bench` times. Images at batch 32, texts at batch 64 (the peers pad
every caption to 77 tokens, as clip.tokenize does; clipc stops at EOT).

Rounds alternate clipc (`build/bench_clipc encode`) and the peers, so
drift of the VM hits both; the table gives each one's median.

Python is for benchmarks only: `bash bench/peers.sh` makes a venv with
Debian's python3-torch and OpenVINO from the Python package index.
"""
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIPC = os.path.join(ROOT, "build", "clipc")
BENCH = os.path.join(ROOT, "build", "bench_clipc")
THREADS = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count()))
torch.set_num_threads(THREADS)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", name
        b, en = e["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[b:en], dtype=np.float32).reshape(e["shape"]).copy())
    return out


class LayerNorm(nn.LayerNorm):
    """OpenAI's: LayerNorm in fp32 whatever the input's dtype."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, d, heads, mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_1 = LayerNorm(d)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(d, 4 * d))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * d, d))
        self.ln_2 = LayerNorm(d)
        self.mask = mask

    def forward(self, x):
        m = self.mask.to(x.dtype) if self.mask is not None else None
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=m)[0]
        return x + self.mlp(self.ln_2(x))


class Visual(nn.Module):
    def __init__(self, width=768, layers=12, heads=12, patch=32, res=224, out=512):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((res // patch) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, out))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], 1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer.resblocks(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class Text(nn.Module):
    def __init__(self, width=512, layers=12, heads=8, ctx=77, vocab=49408, out=512):
        super().__init__()
        mask = torch.full((ctx, ctx), float("-inf")).triu_(1)
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.zeros(ctx, width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[Block(width, heads, mask) for _ in range(layers)])
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, out))

    def forward(self, tokens):
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.transformer.resblocks(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection


def build(weights):
    visual, text = Visual(), Text()
    visual.load_state_dict({k[len("visual."):]: v for k, v in weights.items() if k.startswith("visual.")})
    text.load_state_dict({k: v for k, v in weights.items()
                          if not k.startswith("visual.") and k not in ("logit_scale",)})
    return visual.eval(), text.eval()


def best_rate(fn, count, reps):
    fn()  # warm-up
    best = 1e30
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return count / best


def openvino_models(visual, text, images, tokens, precision):
    import openvino as ov
    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": THREADS}
    if precision:
        cfg["INFERENCE_PRECISION_HINT"] = precision
    out = []
    for name, module, example in (("visual", visual, images), ("text", text, tokens)):
        # through ONNX: OpenVINO's direct PyTorch frontend needs a newer torch than Debian's 1.13
        onnx = f"/tmp/clipc_peers_{name}.onnx"
        if not os.path.exists(onnx):
            with torch.no_grad():
                torch.onnx.export(module, example, onnx, opset_version=14)
        out.append(core.compile_model(core.read_model(onnx), "CPU", cfg))
    prec = out[0].get_property("INFERENCE_PRECISION_HINT")
    return out, str(prec)


def clipc_round():
    """One `bench_clipc encode` run: {precision: (images/s b32, texts/s b64)}."""
    text = subprocess.run([BENCH, "encode"], capture_output=True, text=True, check=True).stdout
    rates, prec = {}, None
    for line in text.splitlines():
        m = re.match(r"precision (\w+):", line)
        if m:
            prec = m.group(1)
        m = re.match(r"encode_(image|text)\s+batch\s+(\d+):\s+([\d.]+)", line)
        if m and prec and m.group(2) in ("32", "64"):
            rates.setdefault(prec, {})[m.group(1)] = float(m.group(3))
    return rates


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    path = "/tmp/clipc_peers_vit_b32.safetensors"
    subprocess.run([CLIPC, "init", "--arch", "ViT-B-32", "--seed", "1", "-o", path], check=True,
                   capture_output=True)
    visual, text = build(load_safetensors(path))
    gen = torch.Generator().manual_seed(7)
    images = torch.randn(32, 3, 224, 224, generator=gen)
    tokens = torch.zeros(64, 77, dtype=torch.long)
    for i in range(64):  # ~11-token captions, like make bench's
        n = 9 + i % 5
        tokens[i, 0] = 49406
        tokens[i, 1:n] = torch.randint(1, 49000, (n - 1,), generator=gen)
        tokens[i, n] = 49407
    with torch.no_grad():
        ref_img = visual(images[:4])
    ov_default, ov_prec = openvino_models(visual, text, images, tokens, None)
    ov_fp32, _ = openvino_models(visual, text, images, tokens, "f32")
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(torch.as_tensor(a), b).min())
    ov_cos = cos(ov_default[0](images.numpy())[0][:4], ref_img)

    peers = {
        "PyTorch fp32": (lambda: visual(images), lambda: text(tokens), False),
        "PyTorch bf16 autocast": (lambda: visual(images), lambda: text(tokens), True),
        f"OpenVINO default ({ov_prec})": (lambda: ov_default[0](images.numpy()), lambda: ov_default[1](tokens.numpy()), False),
        "OpenVINO f32": (lambda: ov_fp32[0](images.numpy()), lambda: ov_fp32[1](tokens.numpy()), False),
    }
    results = {}
    for r in range(rounds):
        for prec, rate in clipc_round().items():
            for kind, v in rate.items():
                results.setdefault(f"clipc {prec}", {}).setdefault(kind, []).append(v)
        for name, (fi, ft, autocast) in peers.items():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                results.setdefault(name, {}).setdefault("image", []).append(best_rate(fi, 32, 3))
                results[name].setdefault("text", []).append(best_rate(ft, 64, 3))
        print(f"round {r + 1} of {rounds} done", file=sys.stderr)
    print(f"peers: torch {torch.__version__} ({THREADS} threads), OpenVINO "
          f"{__import__('openvino').__version__}; OpenVINO default precision {ov_prec}, "
          f"its image cosine vs PyTorch fp32 {ov_cos:.6f}")
    print(f"{'engine':32s} {'images/s (b32)':>15s} {'texts/s (b64)':>15s}   (median of {rounds} interleaved rounds)")
    for name, rate in results.items():
        print(f"{name:32s} {statistics.median(rate['image']):15.1f} {statistics.median(rate['text']):15.1f}")


if __name__ == "__main__":
    main()
