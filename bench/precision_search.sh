#!/usr/bin/env bash
# Search quality at each precision (README, "Precision"): 2,000 Fashion-MNIST
# test images indexed with the shipped model at fp32, bf16 and int8, then one
# text query per class ("a photo of a {class}."). Prints, per precision, the
# share of queries whose top hit is of the queried class (precision@1), the
# share of class matches in the top 10 (precision@10), and how many of the
# top 10 equal the fp32 index's (overlap@10).
# Usage: bash bench/precision_search.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
CLIPC=${1:-build}/clipc
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
"$CLIPC" export-images --limit 2000 --out "$DIR/photos" 2>/dev/null
CLASSES="ankle_boot bag coat dress pullover sandal shirt sneaker t-shirt trouser"
for p in fp32 bf16 int8; do
  "$CLIPC" index --precision "$p" --db "$DIR/$p.db" "$DIR/photos" >/dev/null 2>&1
  for c in $CLASSES; do
    "$CLIPC" search --precision "$p" --db "$DIR/$p.db" -k 10 --json "a photo of a ${c//_/ }." |
      grep -o '"path": "[^"]*"' | sed 's/"path": "//; s/"$//' > "$DIR/$p.$c.txt"
  done
done
printf "%-6s %12s %13s %12s\n" precision "precision@1" "precision@10" "overlap@10"
for p in fp32 bf16 int8; do
  top1=0 top10=0 overlap=0
  for c in $CLASSES; do
    head -1 "$DIR/$p.$c.txt" | grep -q "/photos/$c/" && top1=$((top1 + 1))
    top10=$((top10 + $(grep -c "/photos/$c/" "$DIR/$p.$c.txt" || true)))
    overlap=$((overlap + $(sort "$DIR/$p.$c.txt" | comm -12 - <(sort "$DIR/fp32.$c.txt") | wc -l)))
  done
  printf "%-9s %9s/10 %10s/100 %9s/100\n" "$p" "$top1" "$top10" "$overlap"
done
