#!/usr/bin/env python3
"""tools/ref/gen_coca_b32.py OUTDIR — a random-init full-size OpenCLIP
coca_ViT-B-32 (open_clip 2.23's coca_ViT-B-32.json, no pretrained weights)
with its own outputs, for `build/test_clipc coca` (the CLIPC_COCA_B32
folder). Too large to commit (~500 MB in F16), it is made by scripts/test.sh
in the reference venv of tools/ref/setup.sh. Like the small fixture: every
LayerNorm, bias, query and CLS embedding moved off its init, the decoder's
projection drawn (open_clip leaves it torch.empty), weights rounded to F16.
"""
import json
import os
import struct
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gen_coca_refs import save_safetensors  # noqa: E402


def main():
    out = sys.argv[1]
    import open_clip
    import transformers
    assert transformers.__version__ == "4.36.2", transformers.__version__
    torch.manual_seed(32)
    gen = torch.Generator().manual_seed(32)
    model = open_clip.create_model("coca_ViT-B-32", pretrained=None).eval()
    tokens = open_clip.tokenize(["a photo of a dog", "two people walking on the beach at sunset"], context_length=76)
    images = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        model.text_decoder.text_projection.normal_(0, model.text_decoder.width ** -0.5, generator=gen)
        for name, p in model.named_parameters():
            if p.dim() <= 1 or "query" in name or "cls_emb" in name or "class_embedding" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            p.copy_(p.half().float())
        img = model.encode_image(images, normalize=False)
        txt = model.encode_text(tokens, normalize=False)
        logits = model(images[:1], tokens[1:2, :12])["logits"][0]
        top = torch.topk(logits, 32, dim=-1)
        greedy = model.generate(images, generation_type="top_k", top_k=1)
        beam = model.generate(images[:1])
    os.makedirs(out, exist_ok=True)
    save_safetensors(os.path.join(out, "open_clip_model.safetensors"),
                     {k: v.numpy().astype(np.float16) for k, v in model.state_dict().items()}, {"generator": "open_clip coca_ViT-B-32"})
    cfg = json.load(open(os.path.join(os.path.dirname(open_clip.__file__), "model_configs", "coca_ViT-B-32.json")))
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": cfg}, f, indent=1)
    for name, a in (("images", images), ("tokens", tokens), ("image_features", img), ("text_features", txt),
                    ("logits_top", top.values), ("logits_top_ids", top.indices), ("logits_lse", torch.logsumexp(logits, -1))):
        a = a.numpy()
        np.save(os.path.join(out, name + ".npy"), a.astype(np.int32 if a.dtype.kind == "i" else np.float32))
    with open(os.path.join(out, "captions.json"), "w") as f:
        json.dump({"greedy": greedy.tolist(), "beam": beam.tolist()}, f)
    # the committed small CoCa again, as OpenCLIP's PyTorch file (torch.save of its state_dict, F16):
    # the format its checkpoints are published in
    from safetensors.torch import load_file
    from open_clip.coca_model import CoCa
    fixture = os.path.join(HERE, "..", "..", "tests", "data", "coca")
    small_cfg = json.load(open(os.path.join(fixture, "open_clip_config.json")))["model_cfg"]
    small = CoCa(embed_dim=small_cfg["embed_dim"], multimodal_cfg=small_cfg["multimodal_cfg"],
                 text_cfg=small_cfg["text_cfg"], vision_cfg=small_cfg["vision_cfg"])
    small.load_state_dict({k: v.float() for k, v in load_file(os.path.join(fixture, "open_clip_model.safetensors")).items()})
    os.makedirs(os.path.join(out, "small"), exist_ok=True)
    torch.save({k: v.half() for k, v in small.state_dict().items()}, os.path.join(out, "small", "open_clip_pytorch_model.bin"))
    with open(os.path.join(out, "small", "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": small_cfg}, f, indent=1)
    print("coca_ViT-B-32:", sum(p.numel() for p in model.parameters()), "parameters; captions",
          [len(r) for r in greedy.tolist()], [len(r) for r in beam.tolist()])


if __name__ == "__main__":
    main()
