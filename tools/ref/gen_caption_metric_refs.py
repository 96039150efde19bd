#!/usr/bin/env python3
"""tools/ref/gen_caption_metric_refs.py — reference caption metrics
(tests/data/captioning/metrics.json, read by `build/test_clipc coca`):
pycocoevalcap 1.2's Bleu(4) and Cider, the COCO caption evaluation's
scorers, on generated corpora of hypotheses and references. Both sides
score the same tokens: texts lower-cased, Unicode punctuation made spaces,
split on whitespace (clipc's caption_normalize; pycocoevalcap's own PTB
tokenizer needs Java).

    pip install pycocoevalcap==1.2 && python tools/ref/gen_caption_metric_refs.py
"""
import json
import os
import random
import sys
import unicodedata

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data",
                                                          "captioning", "metrics.json")
WORDS = ("a an the photo picture of dog cat car red blue small large on in with sitting running street grass "
         "beach man woman two people shirt dress sneaker bag coat boot trouser sandal near under next to").split()
DECOR = ["", ".", "!", ",", "?", " ...", "'s"]


def normalize(t):
    t = "".join(" " if unicodedata.category(c).startswith("P") else c for c in t)
    return " ".join(t.lower().split())


def sentence(rng, lo, hi):
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    if words and rng.random() < 0.3:
        words[0] = words[0].capitalize()
    return " ".join(w + (rng.choice(DECOR) if rng.random() < 0.15 else "") for w in words)


def corpus(rng, n, refs_per):
    hyps, refs = [], []
    for _ in range(n):
        rs = [sentence(rng, 3, 14) for _ in range(rng.randint(1, refs_per))]
        if rng.random() < 0.5:  # a hypothesis close to one reference
            base = rng.choice(rs).split()
            for _ in range(rng.randint(0, 3)):
                if base:
                    base[rng.randrange(len(base))] = rng.choice(WORDS)
            h = " ".join(base)
        else:
            h = sentence(rng, 0 if rng.random() < 0.05 else 2, 16)
        hyps.append(h)
        refs.append(rs)
    return hyps, refs


def main():
    rng = random.Random(15)
    cases = []
    for n, per in ((1, 3), (2, 1), (5, 5), (50, 5), (300, 5)):
        hyps, refs = corpus(rng, n, per)
        gts = {str(i): [normalize(r) for r in refs[i]] for i in range(n)}
        res = {str(i): [normalize(hyps[i])] for i in range(n)}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, each = Cider().compute_score(gts, res)
        cases.append({"hyps": hyps, "refs": refs, "bleu": bleu, "cider": cider, "cider_each": [float(x) for x in each]})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"cases": cases}, f, indent=0)
    print([(len(c["hyps"]), round(c["bleu"][3], 4), round(c["cider"], 4)) for c in cases])


if __name__ == "__main__":
    main()
