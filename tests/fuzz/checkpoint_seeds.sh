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
# each seed: the data length as 4 little-endian bytes, then the header JSON (coreutils only)
for f in "$T"/*.safetensors; do
    n=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
    data=$(( $(stat -c %s "$f") - 8 - n ))
    out="$OUT/$(basename "$f" .safetensors)"
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $((data & 255)) $(((data >> 8) & 255)) $(((data >> 16) & 255)) \
        $(((data >> 24) & 255)))" > "$out"
    tail -c +9 "$f" | head -c "$n" >> "$out"
done
