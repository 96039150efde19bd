#!/usr/bin/env python3
"""tools/ref/gen_siglip_refs.py — reference fixtures for SigLIP
(tests/data/siglip/, read by `build/test_clipc siglip`).

No published SigLIP model or tokenizer can be downloaded here, so everything
is made by the reference implementations themselves:

- two SentencePiece models trained by the `sentencepiece` library on a
  generated multilingual corpus: a unigram model with NFKC normalisation,
  shaped like SigLIP's T5 spiece.model (<pad> 0, </s> 1, <unk> 2), and a BPE
  model with byte fallback, shaped like SigLIP 2's Gemma tokenizer.model
  (<pad> 0, <eos> 1, <bos> 2, <unk> 3, no dummy prefix);
- the corpus (corpus.json, 1,200 strings: English, 15 other scripts, emoji,
  numbers, odd whitespace, very long texts) with, for every string, the
  library's own ids (sentencepiece.encode) and Hugging Face's padded ids
  (SiglipTokenizer / GemmaTokenizer, padding="max_length", max_length=64,
  truncation=True);
- two random-init SiglipModels (transformers), every parameter moved off its
  init and rounded to float16, with their own get_image_features /
  get_text_features / logits on fixed inputs; the second is odd (other widths,
  heads, patch and image sizes, text length, exact GELU in the text tower,
  LayerNorm eps 1e-5; transformers 4.49's text head keeps the width, so the
  towers share it);
- SiglipImageProcessor's pixel_values for the shared reference photos and
  the image-mode files of tests/data/modes.

- an OpenCLIP SigLIP (CustomTextCLIP with a small timm vit_*_siglip trunk)
  with its encode_image / encode_text, in OpenCLIP's own names;

Run in the venv of tools/ref/setup.sh plus transformers==4.49.0,
sentencepiece==0.2.0, protobuf and timm==0.9.16 (SiglipModel needs
transformers >= 4.37, open_clip's SigLIP needs timm):
    /tmp/ref-venv/bin/pip install transformers==4.49.0 sentencepiece==0.2.0 protobuf timm==0.9.16
    /tmp/ref-venv/bin/python tools/ref/gen_siglip_refs.py
"""
import io
import json
import os
import random
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "tests", "data", "siglip")
SHARED = os.path.join(HERE, "..", "..", "..", "shared", "reference", "preprocess")

WORDS = {
    "en": "a photo of the dog cat bird car street house tree red blue green small large cute old new sitting running "
          "on in under with and picture image drawing painting close up view night day sky water beach mountain".split(),
    "de": "ein Foto von dem Hund Katze Straße schöne große Bäume Müller Grüße über Fußgänger".split(),
    "fr": "une photo du chat noir à côté de la fenêtre été hôpital garçon crème brûlée".split(),
    "es": "una foto de un perro pequeño niño mañana ¿qué? ¡hola! señor corazón".split(),
    "ru": "фотография кошки на улице собака большой маленький дом Москва".split(),
    "el": "ΟΔΟΣ Σ φωτογραφία σκύλου ΟΔΥΣΣΕΥΣ ΣΑΣ άνθρωπος".split(),
    "tr": "İstanbul ılık IŞIK kedi fotoğrafı İİ".split(),
    "zh": "一张 猫 的 照片 在 街道 上 的 狗 中文 测试".split(),
    "ja": "猫の写真 東京 ひらがな カタカナ ｶﾀｶﾅ です".split(),
    "ko": "고양이 사진 서울 한국어 테스트".split(),
    "ar": "صورة قطة في الشارع مرحبا".split(),
    "hi": "बिल्ली की तस्वीर नमस्ते हिन्दी".split(),
    "th": "รูปแมว ภาษาไทย สวัสดี".split(),
    "he": "תמונה של חתול שלום".split(),
    "vi": "ảnh con mèo Tiếng Việt đường phố".split(),
    "misc": ["ﬁne", "ＡＢＣ１２３！", "①②③", "x²", "½", "Å", "e\u0301", "\u00a0nbsp", "tab\there", "zero\u200bwidth",
             "ideo\u3000space", "line\nbreak", "▁under▁bar", "café", "naïve", "coöperate", "Ǆ", "ǅ", "ß", "ﬀ"],
}
EMOJI = ["😀", "🐱", "🐶", "👍🏽", "👨‍👩‍👧", "🇩🇪", "🇯🇵", "❤️", "✨", "🚀", "🧑🏿‍💻", "☕"]
PUNCT = [".", ",", "!", "?", "...", ";", ":", "'s", "\"", "(", ")", "-", "—", "–", "/", "#", "@", "&", "*", "%", "$", "€", "«", "»", "“", "”"]


def corpus(n, rng):
    out = ["", " ", "   ", "!!!", "...", "a", "A", "a photo of a dog.", "A PHOTO OF A DOG!", "  leading and trailing  ",
           "multiple   spaces\t\tand\ttabs", "12,345.67", "2026-12-01", "3.14159", "+1 (555) 010-9999", "1st 2nd 3rd",
           "ΟΔΟΣ", "ΟΔΟΣ.", "Σ", "İ", "▁", "▁▁a▁b", "ǅungla", "Straße", "x" * 3000,
           " ".join(rng.choice(WORDS["en"]) for _ in range(600))]
    langs = sorted(WORDS)
    while len(out) < n:
        kind = rng.random()
        parts = []
        for _ in range(rng.randint(1, 14)):
            r = rng.random()
            if r < 0.55:
                parts.append(rng.choice(WORDS[rng.choice(langs) if rng.random() < 0.5 else "en"]))
            elif r < 0.7:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
            elif r < 0.8:
                parts.append(rng.choice(EMOJI))
            else:
                parts.append(rng.choice(PUNCT))
        sep = rng.choice([" ", " ", " ", "", "  ", "\t", "\n"])
        s = sep.join(parts)
        if kind < 0.2:
            s = s.upper()
        elif kind < 0.3:
            s = s.title()
        if rng.random() < 0.05:
            s = " ".join([s] * rng.randint(5, 20))  # long texts, truncated at 64 ids
        out.append(s)
    for s in out:  # special-token strings are split out by Hugging Face's tokenizers and not by clipc
        assert not any(t in s for t in ("</s>", "<unk>", "<pad>", "<bos>", "<eos>")) and "\0" not in s
    return out


def train_tokenizers(strings):
    import sentencepiece as spm
    text = "\n".join(s.replace("\n", " ") for s in strings if s.strip()) + "\n"
    common = dict(sentence_iterator=iter(text.splitlines()), hard_vocab_limit=False, num_threads=1,
                  minloglevel=2, seed_sentencepiece_size=20000, shuffle_input_sentence=False)
    uni, bpe = io.BytesIO(), io.BytesIO()
    spm.SentencePieceTrainer.train(model_writer=uni, model_type="unigram", vocab_size=1000,
                                   character_coverage=0.9995, normalization_rule_name="nmt_nfkc",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, **common)
    common["sentence_iterator"] = iter(text.splitlines())
    spm.SentencePieceTrainer.train(model_writer=bpe, model_type="bpe", vocab_size=1200, character_coverage=0.9995,
                                   byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
                                   remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
                                   pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                                   bos_piece="<bos>", unk_piece="<unk>", **common)
    return uni.getvalue(), bpe.getvalue()


def tokenizer_refs(strings):
    import sentencepiece as spm
    from transformers import GemmaTokenizer, SiglipTokenizer
    uni_bytes, bpe_bytes = train_tokenizers(strings)
    for d, name, data in (("unigram", "spiece.model", uni_bytes), ("bpe", "tokenizer.model", bpe_bytes)):
        os.makedirs(os.path.join(OUT, d), exist_ok=True)
        with open(os.path.join(OUT, d, name), "wb") as f:
            f.write(data)
    uni = spm.SentencePieceProcessor(model_proto=uni_bytes)
    bpe = spm.SentencePieceProcessor(model_proto=bpe_bytes)
    hf_uni = SiglipTokenizer(vocab_file=os.path.join(OUT, "unigram", "spiece.model"))
    hf_bpe = GemmaTokenizer(vocab_file=os.path.join(OUT, "bpe", "tokenizer.model"))
    pad = dict(padding="max_length", max_length=64, truncation=True)
    refs = {"strings": strings,
            "unigram_sp": [uni.encode(s) for s in strings],
            "unigram_hf": [hf_uni(s, **pad)["input_ids"] for s in strings],
            "bpe_sp": [bpe.encode(s) for s in strings],
            "bpe_hf": [hf_bpe(s, **pad)["input_ids"] for s in strings]}
    with open(os.path.join(OUT, "tokenizer.json"), "w") as f:
        json.dump(refs, f, ensure_ascii=False, separators=(",", ":"))
    return hf_uni


def save_safetensors(path, tensors, metadata):
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        raw = tensors[name].tobytes()
        header[name] = {"dtype": "F16", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def model_case(name, seed, vision, text, tokenizer, texts):
    from transformers import SiglipConfig, SiglipModel
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = SiglipConfig(text_config=dict(vocab_size=1000, **text), vision_config=vision)
    model = SiglipModel(cfg).eval()
    L = text["max_position_embeddings"]
    tokens = torch.tensor(tokenizer(texts, padding="max_length", max_length=L, truncation=True)["input_ids"])
    images = torch.randn(3, 3, vision["image_size"], vision["image_size"], generator=gen)
    used = torch.zeros(1000, dtype=torch.bool)
    used[tokens.flatten()] = True
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() <= 1 or "probe" in pname:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            if pname == "text_model.embeddings.token_embedding.weight":
                p[~used] = 0
            p.copy_(p.half().float())
        model.logit_scale.fill_(float(np.float16(np.log(10.0))))  # as the F16 file holds it
        model.logit_bias.fill_(-3.5)
        img = model.get_image_features(pixel_values=images)
        txt = model.get_text_features(input_ids=tokens)
        out = model(input_ids=tokens, pixel_values=images)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tensors = {k: v.numpy().astype(np.float16) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    save_safetensors(os.path.join(d, "model.safetensors"), tensors, {"generator": "transformers SiglipModel"})
    full = cfg.to_dict()
    keep = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "layer_norm_eps",
            "hidden_act")
    config = {"model_type": "siglip",
              "text_config": {k: full["text_config"][k] for k in keep + ("vocab_size", "max_position_embeddings")},
              "vision_config": {k: full["vision_config"][k] for k in keep + ("image_size", "patch_size")}}
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(json.dumps(config, indent=1, sort_keys=True) + "\n")
    with open(os.path.join(d, "texts.json"), "w") as f:
        json.dump(texts, f, ensure_ascii=False)
    np.save(os.path.join(d, "images.npy"), images.numpy().astype(np.float32))
    np.save(os.path.join(d, "tokens.npy"), tokens.numpy().astype(np.int32))
    np.save(os.path.join(d, "image_features.npy"), img.numpy().astype(np.float32))
    np.save(os.path.join(d, "text_features.npy"), txt.numpy().astype(np.float32))
    np.save(os.path.join(d, "logits_per_image.npy"), np.ascontiguousarray(out.logits_per_image.numpy(), dtype=np.float32))
    print(f"{name}: {sum(t.size for t in tensors.values())} parameters")


def openclip_case(name, seed, tokenizer, texts):
    """OpenCLIP's SigLIP (CustomTextCLIP: a timm ViT with the MAP head,
    a bidirectional text tower pooled at the last token with a biased
    projection), as its ViT-B-16-SigLIP.json builds it, with the timm trunk
    swapped for a small one of the same kind (vit_*_siglip: no class token,
    global_pool 'map')."""
    import open_clip
    import timm
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    D, L, R = 64, 16, 32
    model = open_clip.model.CustomTextCLIP(
        embed_dim=D, init_logit_bias=-10,
        vision_cfg=dict(image_size=224, timm_model_name="vit_base_patch16_siglip_224", timm_model_pretrained=False,
                        timm_pool="map", timm_proj="none"),
        text_cfg=dict(context_length=L, vocab_size=1000, width=D, heads=2, layers=2, mlp_ratio=3.7362,
                      no_causal_mask=True, proj_bias=True, pool_type="last", norm_kwargs={"eps": 1e-6}))
    model.visual.trunk = timm.models.vision_transformer.VisionTransformer(
        img_size=R, patch_size=8, embed_dim=D, depth=2, num_heads=4, mlp_ratio=2.5, class_token=False,
        global_pool="map", num_classes=0)
    model.eval()
    tokens = torch.tensor(tokenizer(texts, padding="max_length", max_length=L, truncation=True)["input_ids"])
    images = torch.randn(3, 3, R, R, generator=gen)
    used = torch.zeros(1000, dtype=torch.bool)
    used[tokens.flatten()] = True
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() <= 1 or "latent" in pname:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            if pname == "text.token_embedding.weight":
                p[~used] = 0
            p.copy_(p.half().float())
        model.logit_scale.fill_(float(np.float16(np.log(10.0))))
        model.logit_bias.fill_(-3.5)
        img = model.encode_image(images)
        txt = model.encode_text(tokens)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tensors = {k: v.numpy().astype(np.float16) for k, v in model.state_dict().items()}
    save_safetensors(os.path.join(d, "open_clip_model.safetensors"), tensors, {"generator": "open_clip CustomTextCLIP"})
    config = {"model_cfg": {"embed_dim": D, "custom_text": True, "init_logit_bias": -10,
                            "vision_cfg": {"image_size": R, "timm_model_name": "vit_base_patch16_siglip_224",
                                           "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none",
                                           "head_width": 16},
                            "text_cfg": {"context_length": L, "vocab_size": 1000, "width": D, "heads": 2, "layers": 2,
                                         "mlp_ratio": 3.7362, "no_causal_mask": True, "proj_bias": True,
                                         "pool_type": "last", "norm_kwargs": {"eps": 1e-6}}},
              "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                                 "resize_mode": "squash"},
              "note": "the trunk is a 2-block, width-64, 4-head vit_*_siglip of 8x8 patches, not vit_base"}
    with open(os.path.join(d, "open_clip_config.json"), "w") as f:
        f.write(json.dumps(config, indent=1, sort_keys=True) + "\n")
    with open(os.path.join(d, "texts.json"), "w") as f:
        json.dump(texts, f, ensure_ascii=False)
    np.save(os.path.join(d, "images.npy"), images.numpy().astype(np.float32))
    np.save(os.path.join(d, "tokens.npy"), tokens.numpy().astype(np.int32))
    np.save(os.path.join(d, "image_features.npy"), img.numpy().astype(np.float32))
    np.save(os.path.join(d, "text_features.npy"), txt.numpy().astype(np.float32))
    n_img, n_txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = n_img @ n_txt.T * model.logit_scale.exp() + model.logit_bias
    np.save(os.path.join(d, "logits_per_image.npy"), np.ascontiguousarray(logits.detach().numpy(), dtype=np.float32))
    print(f"{name}: {sum(t.size for t in tensors.values())} parameters; "
          f"{sorted(k for k in tensors if 'attn_pool' in k or 'blocks.0.' in k)}")


def preprocess_refs():
    from PIL import Image
    from transformers import SiglipImageProcessor
    files = sorted(os.listdir(os.path.join(SHARED, "images")))
    paths = [os.path.join(SHARED, "images", f) for f in files]
    modes = os.path.join(HERE, "..", "..", "tests", "data", "modes")
    mode_files = [l.strip() for l in open(os.path.join(modes, "files.txt")) if l.strip()]
    paths += [os.path.join(modes, f) for f in mode_files]
    names = files + ["modes/" + f for f in mode_files]
    # every file at 48 x 48 (downscaling); at 96 x 96 those smaller than that (upscaling)
    small = [i for i, p in enumerate(paths) if max(Image.open(p).size) < 96]
    for size, which in ((48, range(len(paths))), (96, small)):
        proc = SiglipImageProcessor(size={"height": size, "width": size}, do_convert_rgb=True)
        px = np.stack([proc(Image.open(paths[i]), return_tensors="np")["pixel_values"][0] for i in which])
        np.save(os.path.join(OUT, f"preprocess_{size}.npy"), px.astype(np.float32))
    # a processor configured otherwise: bilinear, ImageNet's mean and std (preprocessor_config.json's keys)
    other = dict(resample=2, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    proc = SiglipImageProcessor(size={"height": 48, "width": 48}, do_convert_rgb=True, **other)
    px = np.stack([proc(Image.open(p), return_tensors="np")["pixel_values"][0] for p in paths])
    np.save(os.path.join(OUT, "preprocess_48_bilinear_imagenet.npy"), px.astype(np.float32))
    with open(os.path.join(OUT, "preprocess.json"), "w") as f:
        json.dump({"files": names, "upscaled_96": [names[i] for i in small]}, f, indent=1)


def main():
    os.makedirs(OUT, exist_ok=True)
    strings = corpus(1200, random.Random(14))
    hf_uni = tokenizer_refs(strings)
    texts = ["a photo of a dog.", "A Cat, sitting!", "", "the quick brown fox jumps over the lazy dog " * 3]
    model_case("b_like", 1,
               vision=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
               text=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=16),
               tokenizer=hf_uni, texts=texts)
    model_case("odd", 2,
               vision=dict(hidden_size=48, intermediate_size=100, num_hidden_layers=3, num_attention_heads=3,
                           image_size=30, patch_size=6, layer_norm_eps=1e-5),
               text=dict(hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=6,
                         max_position_embeddings=20, hidden_act="gelu", layer_norm_eps=1e-5),
               tokenizer=hf_uni, texts=texts)
    openclip_case("openclip", 3, hf_uni, texts)
    preprocess_refs()


if __name__ == "__main__":
    main()
