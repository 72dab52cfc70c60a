#!/usr/bin/env python
"""Training throughput in float32 and under bfloat16 autocast, side by side, with the same steps and data.

Runs `cometlm train` once per precision (a child process each, so neither warms the other's caches) from the
same starting model, data mixture, seed and step count, into a temporary folder, and reads each run's
`metrics.jsonl`. Prints tokens/s (the first `--warmup` steps excluded), the ratio, and each run's mean loss, so
that a speed-up is never read without what it does to the loss. On CPUs with AMX (Sapphire Rapids and later)
bfloat16 matrix products run on the tile units; elsewhere autocast may be slower than float32.
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


def precision(bf16: bool) -> str:
    return "bf16 autocast" if bf16 else "float32"


def train(out: Path, args, bf16: bool) -> dict:
    command = [
        sys.executable, "-c", "import sys; from cometlm.cli import main; sys.exit(main())", "train", "--comet", args.comet, "--output-dir", str(out),
        "--data", *DATA, "--max-length", str(args.max_length), "--max-steps", str(args.steps), "--batch-size", "1",
        "--lr", "2e-4", "--warmup-steps", "2", "--save-every", str(args.steps), "--log-every", "1", "--mode", "lora",
        "--seed", "0", "--threads", str(args.threads),
    ] + (["--bf16"] if bf16 else [])
    started = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, stdout=subprocess.DEVNULL)
    if done.returncode:
        raise SystemExit(f"error: the {precision(bf16)} run failed (exit {done.returncode}; its error is above)")
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if len(records) - args.warmup < 2:
        raise SystemExit(f"error: --steps {args.steps} leaves fewer than 2 timed steps after --warmup {args.warmup}")
    # "tokens" and "elapsed" are running totals: the timed part is everything after the warm-up steps.
    start = records[args.warmup - 1] if args.warmup else {"tokens": 0, "elapsed": 0.0}
    seconds, tokens = records[-1]["elapsed"] - start["elapsed"], records[-1]["tokens"] - start["tokens"]
    timed_steps = len(records) - args.warmup
    return {
        "precision": precision(bf16),
        "timed_steps": timed_steps,
        "seconds_per_step": seconds / timed_steps,
        "tokens_per_s": tokens / seconds,
        "mean_loss": statistics.mean(r["loss"] for r in records),
        "losses": [round(r["loss"], 4) for r in records],
        "wall_s_with_loading": wall,
        "command": shlex.join(command),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comet", default=str(SHIPPED), help="the model to start from (default: the shipped adapter)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per precision (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing (default 2)")
    parser.add_argument("--max-length", type=int, default=512, help="longest training prompt (default 512)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 0 and less than --steps")

    rows = []
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        for bf16 in (False, True):
            rows.append(train(Path(tmp) / ("bf16" if bf16 else "fp32"), args, bf16))
            row = rows[-1]
            print(f"{row['precision']:>13}: {row['seconds_per_step']:.2f} s/step, {row['tokens_per_s']:.0f} tokens/s, "
                  f"mean loss {row['mean_loss']:.4f}", flush=True)
    fp32, bf16 = rows
    print(f"bf16 autocast / float32: {bf16['tokens_per_s'] / fp32['tokens_per_s']:.2f}x tokens/s; "
          f"mean loss {bf16['mean_loss']:.4f} vs {fp32['mean_loss']:.4f} (same data and steps)")
    record = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {args.threads} threads",
        "runs": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
