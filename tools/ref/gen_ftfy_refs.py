#!/usr/bin/env python3
"""Writes tests/data/ftfy/cases.jsonl: texts and what OpenCLIP's tokenizer
cleans them to before BPE, whitespace_clean(basic_clean(text)).lower() with
the real ftfy 6.3.1 (fix_text, then html.unescape twice), one JSON object per
line: {"kind": ..., "text": ..., "clean": ...}. Kinds:
  not_mojibake   text of Latin-1/Windows-1252 characters that re-encodes to valid
                 UTF-8 but is not mojibake (the issue's "&times;&hellip;", "Ú©", ...)
  entity         HTML entities without ';' before a non-ASCII character ("&copy&nbsp;")
  mojibake       UTF-8 read as Latin-1, Windows-1252, -1251, -1250, MacRoman, cp437,
                 with C1 controls, lost bytes, spaces for 0xA0, and embedded in good text
  random         random mixtures of all of these
Dev-time only: python3 tools/ref/gen_ftfy_refs.py (ftfy 6.3.1 and open_clip installed)
"""
import json
import os
import random

import ftfy
import ftfy.bad_codecs  # noqa: F401
from open_clip.tokenizer import basic_clean, whitespace_clean

assert ftfy.__version__ == "6.3.1"
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "data", "ftfy")
os.makedirs(OUT, exist_ok=True)
rng = random.Random(17)
cases = []


def add(kind, text):
    cases.append({"kind": kind, "text": text, "clean": whitespace_clean(basic_clean(text)).lower()})


# ---- not mojibake, though the characters re-encode to valid UTF-8 ----
given = ["&times;&hellip;", "Ú©", "×…", "price: 5 &times;&hellip; 7", "Ú© and Ø§"]
for t in given:
    add("not_mojibake", t)
leads = [chr(c) for c in range(0xC2, 0xE0)]
conts = [bytes([b]).decode("sloppy-windows-1252") for b in range(0x80, 0xC0)]
while sum(c["kind"] == "not_mojibake" for c in cases) < 45:
    pair = rng.choice(leads) + rng.choice(conts)
    text = rng.choice(["", "the ", "a ", "x"]) + pair + rng.choice(["", " here", "s", ".", " 12"])
    add("not_mojibake", text)

# ---- HTML entities without ';' before a non-ASCII character ----
given = ["&copy&nbsp;", "&copy\u00a0 2020", "&amp\u00e9t\u00e9", "&lt\u2019", "&reg\u4e2d\u6587"]
for t in given:
    add("entity", t)
legacy = ["amp", "lt", "gt", "copy", "reg", "nbsp", "eacute", "uuml", "szlig", "quot", "pound", "yen", "deg",
          "micro", "para", "middot", "frac12", "times", "divide", "aring"]
others = ["\u00a0", "\u00e9", "\u2019", "\u4e2d", "\u00fc", "\u03b1", "\u2014", "\u20ac", "\U0001F600", "\u0431"]
while sum(c["kind"] == "entity" for c in cases) < 45:
    add("entity", rng.choice(["", "A ", "x"]) + "&" + rng.choice(legacy) + rng.choice(others) + rng.choice(["", " end", "&nbsp;", ";"]))

# ---- mojibake ----
given = ["\u00c2\u00a35 \u00e2\x80\x93 \u00e2\x82\u00ac6", "s\u00c3\u00b3", "voil\u00c3 le travail",
         "\u00e2\u20ac\u0153 like this \u00e2\u20ac\ufffd", "caf\u00c3\u00a9 na\u00c3\u00afve"]
for t in given:
    add("mojibake", t)
good = ["caf\u00e9", "na\u00efve", "\u2013 dash \u2014", "\u20ac5", "\u201cquoted\u201d", "it\u2019s", "\u00a35",
        "\u00fcber", "\u0421\u043b\u043e\u0432\u043e", "\u4e2d\u6587", "\U0001F600 smile", "\u00bd cup", "\u00a0nbsp",
        "\u00c5ngstr\u00f6m", "\u0393\u03b5\u03b9\u03ac", "\u0645\u0631\u062d\u0628\u0627", "\u00e0 la carte",
        "Fa\u00e7ade", "\u2122 mark", "\u00b0C", "\u2026 more"]
encodings = ["latin-1", "windows-1252", "sloppy-windows-1252", "windows-1251", "windows-1250", "macroman", "cp437",
             "iso-8859-2"]


def mojibake(text, enc):
    raw = text.encode("utf-8")
    if enc == "windows-1252":
        return raw.decode(enc, errors="replace")
    return raw.decode(enc, errors="replace")


while sum(c["kind"] == "mojibake" for c in cases) < 70:
    words = rng.sample(good, rng.randint(1, 3))
    enc = rng.choice(encodings)
    bad = mojibake(" ".join(words), enc)
    style = rng.randint(0, 3)
    if style == 1:  # embedded in good text
        bad = rng.choice(good) + " " + bad + " " + rng.choice(good)
    elif style == 2:  # 0xA0 became a space
        bad = bad.replace("\u00a0", " ")
    add("mojibake", bad)

# ---- random mixtures ----
alphabet = (leads + conts + ["&", ";", "#", "x", "1", "a", " ", "\u00a0", "\ufffd", "\x85", "\x93", "\u2019", "\u00e9",
            "amp", "copy", "nbsp", "\u00c3", "\u00c2", "\u00e2", "\u20ac", "\u201c", "\u0420", "\u0421", "\u00d0"])
while len(cases) < 400:
    if rng.random() < 0.5:
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
    else:
        text = mojibake(rng.choice(good), rng.choice(encodings)) + rng.choice(alphabet) + rng.choice(good)
    add("random", text)

with open(os.path.join(OUT, "cases.jsonl"), "w", encoding="utf-8") as f:
    for c in cases:
        f.write(json.dumps(c, ensure_ascii=True) + "\n")
print({k: sum(c["kind"] == k for c in cases) for k in ["not_mojibake", "entity", "mojibake", "random"]})
