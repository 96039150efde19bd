#!/usr/bin/env python3
"""tools/ref/gen_finetune_refs.py — reference values for LoRA and CoOp
(tests/data/finetune/, read by `build/test_clipc finetune`).

The model is the shared reference `tiny` (../shared/reference/tiny/: a
perturbed random-init clip.model.CLIP), run by OpenAI's own model code
(clip/model.py, from the `openai-clip` package) on Debian's python3-torch.
The objective is the few-shot one of CoOp and CLIP-LoRA: the mean over the
images of CE(exp(logit_scale) * cos(image, class text), label).

* LoRA (Hu et al. 2021): every block of both towers gets h = x W^T +
  s (x A^T) B^T on q, k, v (row ranges of in_proj), out_proj, c_fc and
  c_proj, through torch.nn.utils.parametrize; A and B are random (B nonzero,
  so every gradient is). Expected: the loss and dL/dA, dL/dB.
* CoOp (Zhou et al. 2022): the class prompts "X X X X name." with the
  embeddings of positions 1..4 replaced by a context [4, width] (CoOp's
  TextEncoder), the image features frozen. Expected: the loss and dL/dctx.

Usage: gen_finetune_refs.py [REFERENCE_DIR [OUT_DIR]], in the venv that
tools/ref/setup.sh makes (Debian's torch 1.13, openai-clip 1.0.1, ftfy 6.3.1).
Rerunning it with those versions rewrites the files byte for byte.
"""
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.utils.parametrize as parametrize

import clip
from clip.model import CLIP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_arch_refs import save_safetensors  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REF = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "shared", "reference")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "..", "tests", "data", "finetune")
CLASSES = ["dog", "t-shirt", "ankle boot"]
LABELS = [0, 1, 2, 0, 2, 1, 1, 0]
RANK, ALPHA = 2, 4.0
TARGETS = ["q", "k", "v", "out", "fc", "proj"]


def load_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    out = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        dtype = {"F32": np.float32, "I64": np.int64}[t["dtype"]]
        out[name] = np.frombuffer(data[a:b], dtype=dtype).reshape(t["shape"]).copy()
    return out, meta


def model_from_reference():
    state, meta = load_safetensors(os.path.join(REF, "tiny", "model.safetensors"))
    m = CLIP(int(meta["embed_dim"]), int(meta["image_resolution"]), int(meta["vision_layers"]),
             int(meta["vision_width"]), int(meta["vision_patch_size"]), int(meta["context_length"]),
             int(meta["vocab_size"]), int(meta["transformer_width"]), int(meta["transformer_heads"]),
             int(meta["transformer_layers"]))
    m.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    m.float().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def class_ce(image_features, class_features, labels, scale):
    i = image_features / image_features.norm(dim=-1, keepdim=True)
    c = class_features / class_features.norm(dim=-1, keepdim=True)
    return torch.nn.functional.cross_entropy(scale * i @ c.t(), labels)


class LoraDelta(torch.nn.Module):
    """W -> W + s [B_1 A_1; ...] for the row ranges of W (q, k, v of in_proj: three; otherwise one)."""

    def __init__(self, pairs, scale):
        super().__init__()
        self.pairs, self.scale = pairs, scale

    def forward(self, w):
        return w + self.scale * torch.cat([b @ a for a, b in self.pairs], dim=0)


def add_lora(model, gen):
    tensors, params = {}, []
    towers = [("visual", model.visual.transformer), ("text", model.transformer)]
    for tower, tr in towers:
        for l, blk in enumerate(tr.resblocks):
            width = blk.ln_1.weight.shape[0]
            dims = {"q": (width, width), "k": (width, width), "v": (width, width), "out": (width, width),
                    "fc": (width, 4 * width), "proj": (4 * width, width)}  # (in, out)
            pair = {}
            for t in TARGETS:
                fan_in, fan_out = dims[t]
                a = (torch.rand(RANK, fan_in, generator=gen) * 2 - 1) / fan_in ** 0.5
                b = torch.randn(fan_out, RANK, generator=gen) * 0.1
                a.requires_grad_(True)
                b.requires_grad_(True)
                pair[t] = (a, b)
                tensors[f"{tower}.{l}.{t}.A"], tensors[f"{tower}.{l}.{t}.B"] = a, b
                params += [a, b]
            s = ALPHA / RANK
            parametrize.register_parametrization(blk.attn, "in_proj_weight",
                                                 LoraDelta([pair["q"], pair["k"], pair["v"]], s))
            parametrize.register_parametrization(blk.attn.out_proj, "weight", LoraDelta([pair["out"]], s))
            parametrize.register_parametrization(blk.mlp.c_fc, "weight", LoraDelta([pair["fc"]], s))
            parametrize.register_parametrization(blk.mlp.c_proj, "weight", LoraDelta([pair["proj"]], s))
    return tensors


def coop_text(model, tokens, ctx):
    """CoOp's TextEncoder: token embeddings with positions 1..n_ctx replaced by ctx."""
    x = model.token_embedding(tokens)
    n_ctx = ctx.shape[0]
    x = torch.cat([x[:, :1], ctx.unsqueeze(0).expand(x.shape[0], -1, -1), x[:, 1 + n_ctx:]], dim=1)
    x = x + model.positional_embedding
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2024)
    images = torch.from_numpy(np.load(os.path.join(REF, "tiny", "images.npy"))[:len(LABELS)])
    labels = torch.tensor(LABELS)
    class_tokens = clip.tokenize([f"a photo of a {c}." for c in CLASSES])
    prompt_tokens = clip.tokenize([f"X X X X {c}." for c in CLASSES])

    model = model_from_reference()
    scale = model.logit_scale.exp()
    lora = add_lora(model, gen)
    loss = class_ce(model.encode_image(images), model.encode_text(class_tokens), labels, scale)
    loss.backward()
    out = {f"lora.{k}": v.detach().numpy() for k, v in lora.items()}
    out.update({f"lora_grad.{k}": v.grad.numpy() for k, v in lora.items()})
    out["lora_loss"] = np.array([loss.item()], dtype=np.float32)

    model = model_from_reference()
    ctx = (torch.randn(4, model.ln_final.weight.shape[0], generator=gen) * 0.02).requires_grad_(True)
    with torch.no_grad():
        image_features = model.encode_image(images)
    loss = class_ce(image_features, coop_text(model, prompt_tokens, ctx), labels, model.logit_scale.exp())
    loss.backward()
    out["coop.ctx"] = ctx.detach().numpy()
    out["coop_grad.ctx"] = ctx.grad.numpy()
    out["coop_loss"] = np.array([loss.item()], dtype=np.float32)

    out["labels"] = np.array(LABELS, dtype=np.float32)
    out["class_tokens"] = class_tokens.numpy().astype(np.float32)
    out["prompt_tokens"] = prompt_tokens.numpy().astype(np.float32)
    save_safetensors(os.path.join(OUT, "reference.safetensors"), {k: v.astype(np.float32) for k, v in out.items()},
                     {"source": "tools/ref/gen_finetune_refs.py"})
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write("Made by tools/ref/gen_finetune_refs.py (torch %s, openai-clip, the shared reference `tiny`):\n"
                "LoRA (rank %d, alpha %g, targets %s, both towers) and CoOp (4 context vectors) on %d images of %d\n"
                "classes (%s); the class cross-entropy's loss and gradients.\n"
                % (torch.__version__, RANK, ALPHA, ",".join(TARGETS), len(LABELS), len(CLASSES), ", ".join(CLASSES)))


if __name__ == "__main__":
    main()
