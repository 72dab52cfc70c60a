#!/usr/bin/env python
"""Short inputs must not regress (issue 3, item 11): perplexity on held-out text that fits in one chunk, the
base model against the trained CoMeT (its LoRA, beacons and sink in place; one chunk has no memory rows).

Windows are cut from the held-out split (the last 5%) of the bundled Bible and essays, never used by the
`lm:` training sources. Prints per-corpus perplexities and the ratio adapted / base (item 11 asks <= 1.05).

    .venv/bin/python benchmarks/short_ppl.py --comet src/cometlm/adapters/smollm2-135m-passkey [--windows 64]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import sys

import torch
from tqdm.auto import tqdm

from cometlm import CometForCausalLM
from cometlm.bundled import BUNDLED_MODEL, load_backbone
from cometlm.files import write_json
from cometlm.training.data import CorpusLMDataset


def mean_loss(model, windows: list[list[int]], desc: str) -> float:
    """Token-weighted mean next-token loss over the windows (each scored on its own)."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids in tqdm(windows, desc=desc, leave=False):
            x = torch.tensor([ids])
            total += model(x, labels=x).loss.item() * (len(ids) - 1)
            count += len(ids) - 1
    return total / count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comet", required=True, help="the trained CoMeT model or adapter folder")
    parser.add_argument("--windows", type=int, default=64, help="held-out windows per corpus")
    parser.add_argument("--length", type=int, default=None, help="tokens per window (default: the chunk size C)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)

    comet = CometForCausalLM.from_pretrained(args.comet).eval()
    length = args.length or comet.comet_config.chunk_size
    if length > comet.comet_config.chunk_size:
        raise SystemExit(f"error: --length {length} does not fit in one chunk (C={comet.comet_config.chunk_size})")
    base, _ = load_backbone(BUNDLED_MODEL)
    base.eval()
    results = {}
    for corpus in ("bible", "essays"):
        data = CorpusLMDataset(comet.tokenizer, corpus, length, seed=0, size=args.windows, split="heldout")
        windows = [data[i].input_ids for i in range(args.windows)]
        base_loss = mean_loss(base, windows, f"{corpus}: base")
        comet_loss = mean_loss(comet, windows, f"{corpus}: CoMeT")
        results[corpus] = {"base_ppl": math.exp(base_loss), "comet_ppl": math.exp(comet_loss),
                           "ratio": math.exp(comet_loss - base_loss)}
        print(f"{corpus:>7}: base ppl {results[corpus]['base_ppl']:.3f}  CoMeT ppl {results[corpus]['comet_ppl']:.3f}"
              f"  ratio {results[corpus]['ratio']:.4f}")
    record = {
        "command": " ".join(sys.argv), "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "comet": args.comet, "windows": args.windows, "length": length, "results": results,
    }
    if args.out:
        write_json(args.out, record)  # atomically: a rerun that finds the file may skip the measurement
    return 0


if __name__ == "__main__":
    sys.exit(main())
