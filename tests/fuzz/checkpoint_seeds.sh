#!/bin/sh
# tests/fuzz/checkpoint_seeds.sh CLIPC DIR — seeds for fuzz_checkpoint, in its input format (the
# data length, then the header JSON) from files clipc writes: tiny models in F32, F16 and BF16, int8,
# and the tensors clipc finetune adds (CoOp's class-specific contexts with their class names, CoCoOp,
# CLIP-Adapter); plus the architecture bomb of the hostile-input tests.
set -eu
CLIPC=$1
OUT=$2
mkdir -p "$OUT"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$CLIPC" init --arch tiny -o "$T/tiny_f32.safetensors" >/dev/null
"$CLIPC" init --arch tiny --dtype F16 -o "$T/tiny_f16.safetensors" >/dev/null
"$CLIPC" init --arch tiny --dtype BF16 -o "$T/tiny_bf16.safetensors" >/dev/null
"$CLIPC" init --arch tiny-rn --dtype F16 -o "$T/tiny_rn.safetensors" >/dev/null
"$CLIPC" convert -m "$T/tiny_f32.safetensors" --dtype int8 -o "$T/tiny_int8.safetensors" >/dev/null
for m in "coop --csc --ctx 2" "cocoop" "adapter"; do
    name=$(echo "$m" | tr -d ' -')
    "$CLIPC" finetune -m "$T/tiny_f32.safetensors" --method $m --dataset fashion-mnist --shots 1 --steps 1 \
        --eval-limit 10 --out "$T/$name" >/dev/null 2>&1
    mv "$T/$name/model.safetensors" "$T/$name.safetensors"
done
cp tests/data/bomb_arch.safetensors "$T/"
for f in "$T"/*.safetensors; do
    python3 -c '
import struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
sys.stdout.buffer.write(struct.pack("<I", len(raw) - 8 - n) + raw[8:8 + n])' "$f" > "$OUT/$(basename "$f" .safetensors)"
done
