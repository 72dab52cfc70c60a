#!/usr/bin/env python
"""A copy of an adapter whose saturated global-memory gates start over: in every layer whose mean gate on real text
(from `gates.py --out`, the first of its datasets or --data) is below --low or above --high, the gate's weight is
zeroed and its bias set to --bias, so that the layer keeps about 1 - sigmoid(-bias) of its state per chunk whatever
the text, and its gradient g(1-g) is no longer near 0. Every other tensor is copied unchanged.

    .venv/bin/python docs/experiments/sizes/reset_gates.py ADAPTER GATES.json --out DIR [--bias 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="a saved CoMeT adapter folder")
    parser.add_argument("gates", type=Path, help="gates.py's JSON for this adapter")
    parser.add_argument("--data", help="which of its datasets decides (default: the first)")
    parser.add_argument("--low", type=float, default=0.05)
    parser.add_argument("--high", type=float, default=0.95)
    parser.add_argument("--bias", type=float, default=2.0, help="the reset gates' bias (2: g = 0.88)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; pick a new folder")
    measured = json.loads(args.gates.read_text())["data"]
    spec = args.data or next(iter(measured))
    means = measured[spec]["mean"]
    reset = [layer for layer, g in enumerate(means) if g < args.low or g > args.high]

    tensors = load_file(args.adapter / "comet.safetensors")
    for layer in reset:
        tensors[f"layers.{layer}.global_memory.gate.weight"].zero_()
        tensors[f"layers.{layer}.global_memory.gate.bias"].fill_(args.bias)
    shutil.copytree(args.adapter, args.out)
    save_file(tensors, args.out / "comet.safetensors")
    (args.out / "gates-reset.json").write_text(json.dumps(
        {"from": str(args.adapter), "decided_on": spec, "low": args.low, "high": args.high, "bias": args.bias,
         "layers": reset}, indent=1))
    print(f"{len(reset)} of {len(means)} layers reset (bias {args.bias}): {reset} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
