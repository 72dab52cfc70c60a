#!/usr/bin/env python
"""Next-token loss on held-out Bible text (the last 5% of the bundled KJV, never used by `lm:bible` training):
plain chunking without memory, CoMeT as configured (untrained or a trained --comet), and full attention.

    .venv/bin/python benchmarks/heldout_loss.py [--comet DIR] [--windows 4] [--length 2048]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys

import torch

from cometlm import CometConfig, CometForCausalLM
from cometlm.training.data import CorpusLMDataset
from cometlm.files import output_file_problem, write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comet", help="a trained CoMeT model or adapter folder; default: untrained, default config")
    parser.add_argument("--windows", type=int, default=4, help="held-out windows to average over")
    parser.add_argument("--length", type=int, default=2048, help="tokens per window")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.out and (problem := output_file_problem(args.out)):
        parser.error(f"--out: {problem}")

    model = (CometForCausalLM.from_pretrained(args.comet) if args.comet
             else CometForCausalLM.from_backbone("smollm2-135m-instruct", CometConfig())).eval()
    no_memory = CometForCausalLM(model.backbone_model, dataclasses.replace(
        model.comet_config, global_slots=0, temp_stride=0, temp_capacity=0, attention_sink=False))
    data = CorpusLMDataset(model.tokenizer, "bible", args.length, seed=0, size=args.windows, split="heldout")
    losses = {"comet": [], "chunked, no memory": [], "full attention": []}
    with torch.inference_mode():
        for i in range(args.windows):
            ids = torch.tensor([data[i].input_ids])
            losses["comet"].append(model(ids, labels=ids).loss.item())
            losses["chunked, no memory"].append(no_memory(ids, labels=ids).loss.item())
            losses["full attention"].append(model.backbone_model(ids, labels=ids).loss.item())
            print(f"window {i}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in losses.items()), file=sys.stderr)
    result = {
        "command": " ".join(sys.argv), "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "comet": args.comet or "untrained", "config": model.comet_config.to_dict(), "windows": args.windows,
        "length": args.length, "mean_loss": {k: sum(v) / len(v) for k, v in losses.items()},
    }
    for name, value in result["mean_loss"].items():
        print(f"{name:>20}: {value:.4f}")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
