#!/usr/bin/env python
"""Training throughput of several ways to run a step, side by side, with the same data, seed and steps.

Runs `cometlm train` once per variant (a child process each, so none warms another's caches) from the same
starting model, data mixture, seed and step count, into a temporary folder, and reads each run's `metrics.jsonl`.
Prints tokens/s (the first `--warmup` steps excluded), the ratio to the first variant, and each run's loss (mean
over all steps and over the last quarter), and draws every run's loss curve in one figure, so that a speed-up is
never read without what it does to the loss. Variants:

  float32        everything in float32 (the default of `cometlm train`)
  bf16-autocast  float32 weights under `torch.autocast(bfloat16)` (`--bf16`)
  bf16-weights   the frozen backbone held in bfloat16 (`--dtype bfloat16`); LoRA, CoMeT's parameters, the gate,
                 the blend and the global state stay float32
  NAME:bN        any of these with N samples per step (`--batch-size N`; default 1)

On CPUs with AMX (Sapphire Rapids and later) bfloat16 matrix products run on the tile units.

The training loss of a step is the mean over the target tokens of its samples, so with several samples per step a
language-modelling sample (hundreds of targets) outweighs a passkey sample (a few): steps with other batch sizes
do not log the same quantity. Each run's trained model is therefore also scored, in float32, on the same
`--heldout` samples of the mixture drawn with another seed: the mean loss per sample, per data source and over all,
which compares runs of any batch size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / "src/cometlm/adapters/smollm2-135m-passkey"
DATA = ["passkey:depth=0-40@0.6", "passkey@0.2", "lm:bible@0.1", "lm:essays@0.1"]  # phase g's mixture


HELDOUT_SEED = 12345  # the held-out samples' draw; the runs train on --seed 0

VARIANTS = {"float32": [], "bf16-autocast": ["--bf16"], "bf16-weights": ["--dtype", "bfloat16"]}


def variant_options(name: str) -> list[str]:
    base, _, batch = name.partition(":b")
    if base not in VARIANTS or (batch and not batch.isdigit()):
        raise SystemExit(f"error: unknown variant {name!r}; use {', '.join(VARIANTS)}, optionally with :bN")
    return [*VARIANTS[base], "--batch-size", batch or "1"]


def train(out: Path, args, name: str) -> dict:
    command = [
        sys.executable, "-m", "cometlm.cli", "train", "--comet", args.comet, "--output-dir", str(out),
        "--data", *DATA, "--max-length", str(args.max_length), "--max-steps", str(args.steps),
        "--lr", "2e-4", "--warmup-steps", "2", "--save-every", str(args.steps), "--log-every", "1", "--mode", "lora",
        "--seed", "0", "--threads", str(args.threads), *variant_options(name),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, stdout=subprocess.DEVNULL)
    if done.returncode:
        raise SystemExit(f"error: the {name} run failed (exit {done.returncode}; its error is above)")
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if len(records) - args.warmup < 2:
        raise SystemExit(f"error: --steps {args.steps} leaves fewer than 2 timed steps after --warmup {args.warmup}")
    # "tokens" and "elapsed" are running totals: the timed part is everything after the warm-up steps.
    start = records[args.warmup - 1] if args.warmup else {"tokens": 0, "elapsed": 0.0}
    seconds, tokens = records[-1]["elapsed"] - start["elapsed"], records[-1]["tokens"] - start["tokens"]
    timed_steps = len(records) - args.warmup
    return {
        "variant": name,
        "timed_steps": timed_steps,
        "seconds_per_step": seconds / timed_steps,
        "tokens_per_s": tokens / seconds,
        "mean_loss": statistics.mean(r["loss"] for r in records),
        "last_quarter_loss": statistics.mean(r["loss"] for r in records[-max(1, len(records) // 4):]),
        "losses": [round(r["loss"], 4) for r in records],
        "wall_s_with_loading": wall,
        "command": shlex.join(command),
    }


def heldout_losses(model_dir: Path, count: int, max_length: int, threads: int) -> dict:
    """Mean loss per held-out sample of ``model_dir`` (float32), per data source and over all samples."""
    import torch

    from cometlm.loading import ModelOptions, load_model
    from cometlm.training.specs import load_mixture

    model = load_model(ModelOptions(adapter=str(model_dir), threads=threads))
    data = load_mixture(DATA, model.tokenizer, max_length, seed=HELDOUT_SEED)
    by_source = {}
    with torch.inference_mode():
        for index in range(count):
            sample = data[index]
            loss = model(torch.tensor([sample.input_ids]), labels=torch.tensor([sample.labels])).loss
            by_source.setdefault(data.source_of(index), []).append(float(loss))
    every = [loss for losses in by_source.values() for loss in losses]
    return {"mean": statistics.mean(every), "samples": count,
            "by_source": {name: {"mean": statistics.mean(v), "samples": len(v)} for name, v in sorted(by_source.items())}}


def plot(rows: list[dict], path: Path, smooth: int = 20) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row in rows:
        losses = row["losses"]
        window = min(smooth, len(losses))
        mean = [statistics.mean(losses[i - window + 1 : i + 1]) for i in range(window - 1, len(losses))]
        axes.plot(range(window, len(losses) + 1), mean,
                  label=f"{row['variant']}: {row['tokens_per_s']:.0f} tokens/s")
    axes.set_xlabel("step")
    axes.set_ylabel(f"training loss (mean of {smooth} steps)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comet", default=str(SHIPPED), help="the model to start from (default: the shipped adapter)")
    parser.add_argument("--variants", nargs="+", default=["float32", "bf16-autocast"], metavar="NAME",
                        help=f"what to compare, the first is the reference: {', '.join(VARIANTS)}, each optionally "
                        "with :bN for N samples per step (default: float32 bf16-autocast)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per variant (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing (default 2)")
    parser.add_argument("--max-length", type=int, default=512, help="longest training prompt (default 512)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--heldout", type=int, default=48,
                        help="held-out samples each trained model is scored on (default 48; 0: none)")
    parser.add_argument("--out", help="also write the results as JSON here, and the loss curves next to it (.png)")
    args = parser.parse_args(argv)
    if args.heldout < 0:
        parser.error("--heldout must be at least 0")
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 0 and less than --steps")
    for name in args.variants:
        variant_options(name)

    rows = []
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        for name in args.variants:
            out = Path(tmp) / name.replace(":", "-")
            rows.append(train(out, args, name))
            row = rows[-1]
            if args.heldout:
                row["heldout"] = heldout_losses(out / "final", args.heldout, args.max_length, args.threads)
            held = f", held-out loss {row['heldout']['mean']:.4f}" if args.heldout else ""
            print(f"{name:>18}: {row['seconds_per_step']:.2f} s/step, {row['tokens_per_s']:.0f} tokens/s, "
                  f"loss {row['mean_loss']:.4f} (last quarter {row['last_quarter_loss']:.4f}){held}", flush=True)
            if args.heldout:
                print("  held-out loss by source: " + ", ".join(
                    f"{k} {v['mean']:.4f} ({v['samples']})" for k, v in row["heldout"]["by_source"].items()))
    reference = rows[0]
    for row in rows[1:]:
        held = (f"; held-out loss {row['heldout']['mean']:.4f} vs {reference['heldout']['mean']:.4f}"
                if args.heldout else "")
        print(f"{row['variant']} / {reference['variant']}: {row['tokens_per_s'] / reference['tokens_per_s']:.2f}x "
              f"tokens/s; last-quarter loss {row['last_quarter_loss']:.4f} vs {reference['last_quarter_loss']:.4f}"
              f"{held}")
    record = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor()} {os.cpu_count()} cores, {args.threads} threads",
        "load_average_at_end": os.getloadavg(),
        "runs": rows,
    }
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        plot(rows, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
