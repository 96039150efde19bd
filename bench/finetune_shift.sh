#!/bin/sh
# The domain-shift benchmark of the README: the shipped Fashion-MNIST model
# on inverted Fashion-MNIST (dark clothes on white), zero-shot, linear probe
# and each fine-tuning method on 1, 4 and 16 shots per class of the inverted
# training split; top-1 on the first 2,000 inverted test images and on the
# original test images (forgetting). Prints a Markdown table; the README's
# table is one run of it.
#   sh bench/finetune_shift.sh [OUT_DIR]
set -e
CLIPC=${CLIPC:-build/clipc}
OUT=${1:-/tmp/clipc-shift}
mkdir -p "$OUT"
LIMIT=2000
field() { sed -n "s/.*\"$1\":[[:space:]]*\([-0-9.e]*\).*/\1/p" "$2" | head -1; }
pct() { awk "BEGIN { printf \"%.1f\", 100 * $1 }"; }
echo "| method | shots | inverted test top-1 | original test top-1 | trainable parameters | wall time (s) |"
echo "|---|---|---|---|---|---|"
$CLIPC eval zeroshot --dataset fashion-mnist-inverted --out "$OUT/zs" >/dev/null 2>&1
echo "| zero-shot | 0 | $(pct $(field acc1 "$OUT/zs/zeroshot.json")) (all 10,000) | | 0 | |"
for shots in 1 4 16; do
  $CLIPC eval linear-probe --dataset fashion-mnist-inverted --shots $shots --out "$OUT/lp$shots" >/dev/null 2>&1
  echo "| linear probe | $shots | $(pct $(field lp_acc1 "$OUT/lp$shots/linear_probe_fewshot.json")) (all 10,000) | | 650 | |"
  # 200 steps of batch 32 each; CoOp 1,000 (its paper's 200 epochs of 16 shots x 10 classes);
  # coop --csc is CoOp with a context per class (CSC), 4 vectors each
  for m in "lora:lora --steps 200 --rank 4 --alpha 8 --targets q,k,v,out,fc,proj --lr 1e-2" \
           "adapter:adapter --steps 200 --residual-ratio 0.6 --lr 1e-2" \
           "coop:coop --steps 1000 --lr 1e-1" \
           "coop --csc:coop --csc --ctx 4 --steps 1000 --lr 1e-1" \
           "cocoop:cocoop --steps 200 --lr 1e-1" \
           "full:full --steps 200 --tower both --lr 1e-3"; do
    name=${m%%:*}
    args=${m#*:}
    dir="$OUT/$(echo "$name" | tr -d ' -')-$shots"
    rm -rf "$dir"
    $CLIPC finetune --method $args --dataset fashion-mnist-inverted --source-test-dataset fashion-mnist \
      --shots $shots --eval-limit $LIMIT --out "$dir" 2>/dev/null
    j="$dir/finetune.json"
    echo "| $name | $shots | $(pct $(field zeroshot_top1_after $j)) | $(pct $(field source_top1_after $j)) | $(field trainable_parameters $j) | $(awk "BEGIN { printf \"%.1f\", $(field wall_time_s $j) }") |"
  done
done
