#!/usr/bin/env python3
"""tools/ref/gen_pytorch_refs.py — PyTorch checkpoint fixtures
(tests/data/pytorch/, read by `build/test_clipc arch`).

One small random-init OpenCLIP model (LayerScale, MLP ratio 4.3637,
perturbed, weights rounded to float16 so every file holds the same values),
saved the ways users hold such weights:
  f32.pt       torch.save(state_dict) in float32
  f16.pt       the same in float16 (OpenAI publishes float16)
  strided.bin  float32, with some tensors saved as non-contiguous views and
               the state dict nested under "state_dict" with DataParallel's
               "module." prefix, as training checkpoints are
  torchscript.pt, torchscript_f16.pt
               torch.jit.save of the scripted model (OpenAI's format), float32
               and float16 (their code entries differ run to run; tensors do not)
  model.safetensors  the same weights as safetensors (float16)
plus open_clip_config.json (head counts), the inputs and open_clip's own
encode_image / encode_text outputs. Same tool versions as gen_arch_refs.py.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from gen_arch_refs import inputs, perturb_and_round, save_safetensors  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "pytorch")


def main():
    import open_clip
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(4)
    vision = dict(layers=2, width=32, head_width=16, mlp_ratio=4.3637, patch_size=8, image_size=32, ls_init_value=0.5)
    text = dict(layers=2, width=16, heads=2, mlp_ratio=4.3637, ls_init_value=0.5)
    model = open_clip.model.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=dict(context_length=24, vocab_size=49408, **text),
                                 quick_gelu=True).eval()
    images, tokens = inputs(32, 24, gen)
    perturb_and_round(model, gen, "token_embedding.weight", tokens)
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(tokens)
    sd = model.state_dict()
    torch.save({k: v.float() for k, v in sd.items()}, os.path.join(OUT, "f32.pt"))
    torch.save({k: v.half() for k, v in sd.items()}, os.path.join(OUT, "f16.pt"))
    strided = {}
    for k, v in sd.items():
        v = v.float()
        if v.dim() == 2:  # the same values through a transposed view: stride (1, rows)
            v = v.t().contiguous().t()
        strided["module." + k] = v
    torch.save({"epoch": 3, "state_dict": strided}, os.path.join(OUT, "strided.bin"))
    torch.jit.save(torch.jit.script(model), os.path.join(OUT, "torchscript.pt"))  # as OpenAI publishes
    half = open_clip.model.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=dict(context_length=24, vocab_size=49408, **text),
                                quick_gelu=True).eval()
    half.load_state_dict(sd)
    torch.jit.save(torch.jit.script(half.half()), os.path.join(OUT, "torchscript_f16.pt"))  # OpenAI's are float16
    save_safetensors(os.path.join(OUT, "model.safetensors"), {k: v.numpy().astype(np.float16) for k, v in sd.items()},
                     {"naming": "openai", "generator": "open_clip CLIP"})
    with open(os.path.join(OUT, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": {"embed_dim": 16, "quick_gelu": True, "vision_cfg": vision,
                                 "text_cfg": dict(context_length=24, vocab_size=49408, **text)}}, f, indent=1, sort_keys=True)
        f.write("\n")
    np.save(os.path.join(OUT, "images.npy"), images.numpy().astype(np.float32))
    np.save(os.path.join(OUT, "tokens.npy"), tokens.numpy().astype(np.int32))
    np.save(os.path.join(OUT, "image_features.npy"), img.numpy().astype(np.float32))
    np.save(os.path.join(OUT, "text_features.npy"), txt.numpy().astype(np.float32))
    print("pytorch fixtures:", sum(v.numel() for v in sd.values()), "parameters")


if __name__ == "__main__":
    main()
