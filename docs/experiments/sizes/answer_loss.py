#!/usr/bin/env python
"""Does a trained adapter use more memory than it was trained with? The answer's loss under other sizes.

The temporary memory's capacity K and the chunk size C have no parameters of their own (the queue holds compressed
beacon rows; a chunk is a number of text rows), so an adapter trained at one K and C loads at another. This script
scores the same training-distribution samples (drawn with a seed no training run used, so prompts training never
saw) under several sizes and prints, per dataset and size, the answer's teacher-forced loss (nats per target token)
and the share of samples whose every answer token is the argmax, and where the answer's value appears verbatim in
the prompt (a key, a needle's value), both again by how many chunks back it sits. Chunks are right-aligned (a short first chunk,
then full ones, the last ending with the answer), as the evaluations' primed layout reads a prompt.

    .venv/bin/python docs/experiments/sizes/answer_loss.py ADAPTER --sizes 128:16 128:64 256:16 \
        --data babilong-qa1:depth=0-70 ruler-niah-single:depth=0-70 --samples 24 --out OUT.json

A size is C:K. Only the training split's generators are read (never the test split).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from cometlm.files import write_text
from cometlm.loading import ModelOptions, load_model
from cometlm.training.data import IGNORE
from cometlm.training.specs import load_dataset


def resized(adapter: Path, chunk: int, capacity: int, into: Path) -> Path:
    """A copy of ``adapter`` whose config reads chunks of ``chunk`` tokens with a queue of ``capacity`` rows."""
    out = into / f"c{chunk}-k{capacity}"
    shutil.copytree(adapter, out)
    config = json.loads((out / "comet_config.json").read_text())
    config["comet"]["chunk_size"], config["comet"]["temp_capacity"] = chunk, capacity
    (out / "comet_config.json").write_text(json.dumps(config, indent=2))
    return out


def right_aligned(n: int, chunk: int) -> torch.Tensor:
    sizes = ([n % chunk] if n % chunk else []) + [chunk] * (n // chunk)
    return torch.tensor([sizes])


def chunk_of(position: int, n: int, chunk: int) -> int:
    """The index of the right-aligned chunk (see ``right_aligned``) that holds ``position`` of ``n`` tokens."""
    first = n % chunk
    if not first:
        return position // chunk
    return 0 if position < first else 1 + (position - first) // chunk


def fact_distance(sample, chunk: int) -> int | None:
    """How many chunks before the answer's own the answer's value last appears in the prompt (0: the open chunk,
    1: the chunk the temporary queue holds at the shipped sizes, 2 or more: only the global memory), or None
    where it does not appear verbatim or is too short to place (under 3 tokens, e.g. a QA1 room named many times).
    The answer's last token (a period or the end of sequence) is left out of the search."""
    ids, labels = sample.input_ids, sample.labels
    start = next(i for i, label in enumerate(labels) if label != IGNORE)
    answer = [t for t, label in zip(ids, labels) if label != IGNORE][:-1]
    for value in (answer, answer[1:]):  # the value with and without its leading space
        if len(value) < 3:
            return None
        for at in range(start - len(value), -1, -1):
            if ids[at:at + len(value)] == value:
                return chunk_of(start, len(ids), chunk) - chunk_of(at + len(value) - 1, len(ids), chunk)
    return None


def distance_groups(scored: list, distances: list) -> dict[str, list]:
    """The scored samples by the fact's distance: open (0), queue (1), global (2 or more), unplaced (None)."""
    groups = {"open": [], "queue": [], "global": [], "unplaced": []}
    for s, d in zip(scored, distances):
        groups["unplaced" if d is None else ("open", "queue", "global")[min(d, 2)]].append(s)
    return groups


def by_distance(scored: list, distances: list) -> str:
    """Loss and exact share per fact distance: 'open 0.12 (0.80, n=10) | queue ... | global ... | unplaced ...'."""
    return " | ".join(f"{name} {sum(s[0] for s in g) / len(g):.3f} ({sum(s[1] for s in g) / len(g):.2f}, n={len(g)})"
                      for name, g in distance_groups(scored, distances).items() if g)


def mean_by_distance(rows: list[dict]) -> dict[str, float]:
    """Each distance's loss averaged over the datasets with a sample there (each dataset's mean counts once)."""
    means: dict[str, list[float]] = {}
    for row in rows:
        for name, group in distance_groups(row["per_sample"], row["fact_distance"]).items():
            if group and name != "unplaced":
                means.setdefault(name, []).append(sum(s[0] for s in group) / len(group))
    return {name: sum(v) / len(v) for name, v in means.items()}


def score(model, sample) -> tuple[float, bool, int]:
    ids = torch.tensor([sample.input_ids])
    labels = torch.tensor([sample.labels])
    out = model(ids, labels=labels, chunk_sizes=right_aligned(len(sample.input_ids), model.comet_config.chunk_size),
                return_logits=True)
    targets = labels[0, 1:]
    keep = targets != IGNORE
    guess = out.logits[0, :-1].argmax(-1)
    n = int(keep.sum())
    return float(out.row_losses[0]) / n, bool((guess[keep] == targets[keep]).all()), n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="a saved CoMeT adapter folder")
    parser.add_argument("--sizes", nargs="+", required=True, help="C:K pairs, e.g. 128:16 128:64")
    parser.add_argument("--data", nargs="+", required=True, help="training data specs, as cometlm train --data")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=24, help="samples per dataset")
    parser.add_argument("--seed", type=int, default=900, help="the datasets' seed (training runs used 0-102)")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sizes = []
    for size in args.sizes:
        try:
            c, k = (int(v) for v in size.split(":"))
        except ValueError:
            parser.error(f"a size is C:K, two integers (got {size!r})")
        sizes.append((c, k))

    result = {"command": " ".join(sys.argv), "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "adapter": str(args.adapter), "dtype": args.dtype, "max_length": args.max_length, "seed": args.seed,
              "samples": args.samples, "rows": []}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for c, k in sizes:
            model = load_model(ModelOptions(adapter=str(resized(args.adapter, c, k, Path(tmp))), dtype=args.dtype,
                                            threads=args.threads)).eval()
            for spec in args.data:
                data = load_dataset(spec, model.tokenizer, args.max_length, seed=args.seed)
                scored = [score(model, data[i]) for i in range(args.samples)]
                distances = [fact_distance(data[i], c) for i in range(args.samples)]
                row = {"chunk_size": c, "temp_capacity": k, "data": spec,
                       "loss": sum(s[0] for s in scored) / len(scored),
                       "exact": sum(s[1] for s in scored) / len(scored), "per_sample": scored,
                       "fact_distance": distances}
                result["rows"].append(row)
                print(f"C={c:4d} K={k:3d} {spec:40s} loss {row['loss']:.3f} exact {row['exact']:.2f}", flush=True)
                if any(d is not None for d in distances):
                    print(f"    by the fact's distance in chunks: {by_distance(scored, distances)}", flush=True)
    for c, k in sizes:
        placed = [row for row in result["rows"] if (row["chunk_size"], row["temp_capacity"]) == (c, k)
                  and any(d is not None for d in row["fact_distance"])]
        if placed:
            means = mean_by_distance(placed)
            result.setdefault("mean_by_distance", {})[f"{c}:{k}"] = means
            print(f"C={c:4d} K={k:3d} mean over the {len(placed)} datasets with placed values: "
                  + " | ".join(f"{name} {value:.3f}" for name, value in means.items()), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, json.dumps(result, indent=1))  # whole or not at all: phase_rule.sh skips what exists
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
