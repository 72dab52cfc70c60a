#!/usr/bin/env python
"""Adds each step's mixture source to a metrics.jsonl written before `cometlm train` logged sources, and draws the
per-source loss plot. A mixture's draw for sample i depends only on (seed, i) and the weights, so for batch size 1
without accumulation or data parallelism step s read sample s - 1 (the data position starts at 0).

    .venv/bin/python docs/experiments/add_mixture_sources.py METRICS OUT.jsonl OUT.png --seed 9 \
        --data passkey:depth=0-40,digits=5-7@0.6 passkey:digits=5-7@0.2 lm:bible@0.1 lm:essays@0.1
"""

import argparse
import json
from pathlib import Path

from cometlm.training.data import MixtureDataset
from cometlm.training.metrics import plot_loss_curve, read_metrics

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("metrics")
parser.add_argument("out_jsonl")
parser.add_argument("out_png")
parser.add_argument("--data", nargs="+", required=True, help="the run's --data SPEC@WEIGHT arguments, in order")
parser.add_argument("--seed", type=int, required=True, help="the run's --seed")
args = parser.parse_args()

names = [spec.rpartition("@")[0] or spec for spec in args.data]
weights = [float(spec.rpartition("@")[2]) if "@" in spec else 1.0 for spec in args.data]
mixture = MixtureDataset([[None]] * len(names), weights, seed=args.seed, names=names)  # only the draw is needed
with open(args.out_jsonl, "w") as f:
    for record in read_metrics(args.metrics):
        source = mixture.source_of(record["step"] - 1)
        f.write(json.dumps({**record, "sources": [source], "loss_by_source": {source: record["loss"]}}) + "\n")
plot_loss_curve(Path(args.out_jsonl), Path(args.out_png))
