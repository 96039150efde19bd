#!/usr/bin/env python3
"""tools/ref/gen_arch_refs.py — reference fixtures for the architecture
options of OpenCLIP and Hugging Face CLIP models that OpenAI's checkpoints
do not use (tests/data/arch/, read by `build/test_clipc arch`).

Each case is a random-init model built by the reference implementation
itself (transformers' CLIPModel, open_clip's CLIP), perturbed so that no
LayerNorm, bias or LayerScale gain sits at its initial value, with its
weights rounded to float16 so that the committed F16 file holds them
exactly. The expected outputs are the reference's own encode_image /
encode_text (get_image_features / get_text_features) in float32.

Token embedding rows the test texts never use are zeroed: the files then
compress to little in git.

Run with Debian's python3-torch and python3-torchvision plus, from the
Python package index, transformers==4.36.2 and open_clip_torch==2.23.0
(tools/ref/setup.sh makes that venv). Rerunning it with those versions
rewrites the same files byte for byte.
"""
import json
import os
import struct
import sys

import numpy as np
import torch

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "arch")
SOT, EOT = 49406, 49407


def save_safetensors(path, tensors, metadata):
    """safetensors as the format defines it, F16 tensors in name order."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        a = tensors[name]
        raw = a.tobytes()
        header[name] = {"dtype": {"float16": "F16", "float32": "F32"}[str(a.dtype)], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def inputs(resolution, context, gen):
    images = torch.randn(3, 3, resolution, resolution, generator=gen)
    tokens = torch.zeros(4, context, dtype=torch.int64)
    for i, n in enumerate((3, 7, 12, context - 2)):
        tokens[i, 0] = SOT
        tokens[i, 1:n + 1] = torch.randint(1, 400, (n,), generator=gen)
        tokens[i, n + 1] = EOT
    return images, tokens


def perturb_and_round(model, gen, token_key, tokens):
    """Every float parameter moved off its init, then rounded to float16;
    unused token-embedding rows zeroed."""
    used = torch.zeros(49408, dtype=torch.bool)
    used[tokens.flatten()] = True
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or "gamma" in name or "class_embedding" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            if name == token_key:
                p[~used] = 0
            p.copy_(p.half().float())


def write_case(name, model, tensors, metadata, images, tokens, image_features, text_features, config=None):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    save_safetensors(os.path.join(d, "model.safetensors"),
                     {k: v.detach().numpy().astype(np.float16) for k, v in tensors.items()}, metadata)
    if config is not None:
        with open(os.path.join(d, "config.json"), "w") as f:
            f.write(json.dumps(config, indent=1, sort_keys=True) + "\n")
    np.save(os.path.join(d, "images.npy"), images.numpy().astype(np.float32))
    np.save(os.path.join(d, "tokens.npy"), tokens.numpy().astype(np.int32))
    np.save(os.path.join(d, "image_features.npy"), image_features.detach().numpy().astype(np.float32))
    np.save(os.path.join(d, "text_features.npy"), text_features.detach().numpy().astype(np.float32))
    print(f"{name}: {sum(t.numel() for t in tensors.values())} parameters")


def hf_case(name, seed, vision, text):
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = CLIPConfig(text_config=dict(vocab_size=49408, max_position_embeddings=24, **text),
                     vision_config=dict(**vision), projection_dim=24)
    model = CLIPModel(cfg).eval()
    images, tokens = inputs(vision["image_size"], 24, gen)
    perturb_and_round(model, gen, "text_model.embeddings.token_embedding.weight", tokens)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=images)
        txt = model.get_text_features(input_ids=tokens)
    tensors = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    config = {"text_config": {k: cfg.text_config.to_dict()[k] for k in
                              ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                               "layer_norm_eps", "hidden_act", "vocab_size", "max_position_embeddings")},
              "vision_config": {k: cfg.vision_config.to_dict()[k] for k in
                                ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                                 "layer_norm_eps", "hidden_act", "image_size", "patch_size")},
              "projection_dim": 24, "model_type": "clip"}
    write_case(name, model, tensors, {"naming": "hf", "generator": "transformers CLIPModel"}, images, tokens, img,
               txt, config)


def openclip_case(name, seed, vision, text, quick_gelu=True):
    import open_clip
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = open_clip.model.CLIP(embed_dim=24, vision_cfg=vision, text_cfg=dict(context_length=24, vocab_size=49408,
                                                                              **text), quick_gelu=quick_gelu).eval()
    images, tokens = inputs(vision["image_size"], 24, gen)
    perturb_and_round(model, gen, "token_embedding.weight", tokens)
    with torch.no_grad():
        img = model.encode_image(images)
        txt = model.encode_text(tokens)
    tensors = dict(model.state_dict())
    meta = {"naming": "openai", "generator": "open_clip CLIP", "vision_heads": str(vision["width"] // vision["head_width"]),
            "transformer_heads": str(text["heads"]), "quick_gelu": "true" if quick_gelu else "false"}
    write_case(name, model, tensors, meta, images, tokens, img, txt)


def main():
    # Hugging Face: MLPs of 2.5x, LayerNorm eps 1e-6 (image) and 1e-3 (text),
    # and a different activation per tower.
    hf_case("hf_mlp2.5_eps_mixed_act", 1,
            vision=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                        image_size=32, patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu"),
            text=dict(hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2,
                      layer_norm_eps=1e-3, hidden_act="quick_gelu"))
    # OpenCLIP: ViT-g-14's MLP ratio (4.3637) with LayerScale on both towers.
    openclip_case("openclip_mlp4.3637_layerscale", 2,
                  vision=dict(layers=2, width=64, head_width=16, mlp_ratio=4.3637, patch_size=8, image_size=32,
                              ls_init_value=0.5),
                  text=dict(layers=2, width=32, heads=2, mlp_ratio=4.3637, ls_init_value=0.5))
    # OpenCLIP: ViT-bigG-14's MLP ratio (4.9231), exact GELU.
    openclip_case("openclip_mlp4.9231_gelu", 3,
                  vision=dict(layers=2, width=64, head_width=16, mlp_ratio=4.9231, patch_size=16, image_size=48),
                  text=dict(layers=3, width=32, heads=4, mlp_ratio=4.9231), quick_gelu=False)


if __name__ == "__main__":
    main()
