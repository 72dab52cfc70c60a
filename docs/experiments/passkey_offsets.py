#!/usr/bin/env python
"""Passkey accuracy by where the key's digits sit in their chunk, from a grid's trials.jsonl (comet methods,
primed or fixed layout: chunks of C after a first chunk of `first_chunk_tokens`).

    python docs/experiments/passkey_offsets.py RESULT_DIR [RESULT_DIR ...] [--chunk-size 128] [--bucket 16]

The needle is "The pass key is NNNNN. ...": its digits start `--prefix` tokens after `needle_start` (5 with
SmolLM2's tokenizer: the diagnostic in passkey_miss_margin.txt found them there) and take one token each.
Keys whose digits run over a chunk boundary are counted apart.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("results", nargs="+", help="folders holding a trials.jsonl")
parser.add_argument("--chunk-size", type=int, default=128)
parser.add_argument("--prefix", type=int, default=5, help="tokens from the needle's start to the key's first digit")
parser.add_argument("--bucket", type=int, default=16, help="offsets per row")
args = parser.parse_args()

rows = defaultdict(lambda: [0, 0])  # bucket -> [correct, trials]
for folder in args.results:
    for line in (Path(folder) / "trials.jsonl").read_text().splitlines():
        r = json.loads(line)
        first = r["first_chunk_tokens"] or args.chunk_size
        start = r["needle_start"] + args.prefix  # the first digit's position in the prompt
        if start < first:
            where = "first chunk"
        else:
            offset = (start - first) % args.chunk_size
            crosses = offset + len(r["key"]) > args.chunk_size
            where = "over a boundary" if crosses else f"{offset // args.bucket * args.bucket:>3}-" \
                f"{offset // args.bucket * args.bucket + args.bucket - 1:<3}"
        rows[where][0] += r["correct"]
        rows[where][1] += 1
print(f"{'first digit at offset':<22}{'correct':>10}{'accuracy':>10}")
for where in sorted(rows):
    correct, n = rows[where]
    print(f"{where:<22}{f'{correct}/{n}':>10}{correct / n:>10.2f}")
