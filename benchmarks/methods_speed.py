#!/usr/bin/env python
"""Every method of the comparison answering the same passkey prompts, timed side by side under the same conditions.

The comparison table (`recipes/compare-smollm2.sh`) takes its time and memory columns from evaluation runs that
took days, some alone on the CPU and some next to a training job, with 1 or 2 threads; this benchmark puts the
methods on an equal footing. For each method and length it runs `cometlm eval passkey` with one trial at one depth
in its own process (peak resident memory only grows within a process), alone and one after another, then prints
seconds per trial, tokens read per second and peak RSS, with ratios against CoMeT at the same length. The timed
quantity is exactly what the evaluation's `s/trial` column records: reading the prompt and generating the answer,
model loading excluded.

    .venv/bin/python benchmarks/methods_speed.py [--lengths 4096 32768] [--threads 2] [--out FILE]

full attention answers only prompts that fit the backbone's window: longer ones are shown as beyond it. The load
averages printed before and after each run count the runs themselves (about their thread count when nothing else
runs), so they show other work on the machine only as an excess over that.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from cometlm.bundled import SHIPPED_ADAPTER
from cometlm.files import output_file_problem, write_json

METHODS = ("comet", "no-memory", "full", "truncated", "sliding-window")


def run_one(method: str, length: int, args, scratch: Path) -> dict:
    """One trial of `method` at `length` tokens in a fresh process; its trial record, or a failure."""
    out = scratch / f"{method}-{length}"
    command = [sys.executable, "-m", "cometlm", "eval", "passkey", "--comet", args.comet, "--method", method,
               "--lengths", str(length), "--depths", str(args.depth), "--trials", "1", "--seed", str(args.seed),
               "--no-progress", "--out", str(out)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    before = os.getloadavg()[0]  # still counts the run before this one for a minute or so
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        if "exceeds the backbone's window" in last:
            return {"method": method, "length": length, "failed": "beyond the backbone's window"}
        return {"method": method, "length": length, "failed": f"failed: {last}"}
    record = json.loads((out / "trials.jsonl").read_text().splitlines()[-1])
    load1 = os.getloadavg()[0]
    return {"method": method, "length": length, "seconds": record["seconds"], "tokens_per_s": record["tokens_per_s"],
            "peak_rss_mib": record["peak_rss_mib"], "read_tokens": record["read_tokens"],
            "correct": record["correct"], "load1_before": round(before, 2), "load1_after": round(load1, 2),
            "command": shlex.join(command)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comet", default=str(SHIPPED_ADAPTER),
                        help="the CoMeT model; the other methods read with its backbone and LoRA (default: shipped)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="the methods to time, in this order (default: all)")
    parser.add_argument("--lengths", nargs="+", type=int, default=[4096, 32768], help="prompt lengths in tokens")
    parser.add_argument("--depth", type=float, default=50, help="key depth in percent (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the passkey prompt (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.out and (problem := output_file_problem(args.out)):
        parser.error(f"--out: {problem}")

    rows = []
    with tempfile.TemporaryDirectory(prefix="methods-speed-") as scratch:
        for length in sorted(args.lengths):
            for method in args.methods:
                row = run_one(method, length, args, Path(scratch))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)

    comet = {r["length"]: r for r in rows if r["method"] == "comet" and "failed" not in r}
    print(f"{'method':<16}{'length':>8}{'s/trial':>10}{'tok/s':>9}{'peak MiB':>10}{'time vs comet':>15}"
          f"{'memory vs comet':>17}{'load1 before/after':>20}")
    for r in rows:
        if "failed" in r:
            print(f"{r['method']:<16}{r['length']:>8}  {r['failed']}")
            continue
        base = comet.get(r["length"])
        time_ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else "-"
        memory_ratio = f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x" if base else "-"
        print(f"{r['method']:<16}{r['length']:>8}{r['seconds']:>10.1f}{r['tokens_per_s']:>9,.0f}"
              f"{r['peak_rss_mib']:>10,.0f}{time_ratio:>15}{memory_ratio:>17}"
              f"{r['load1_before']:>13.2f} / {r['load1_after']:.2f}")
    if args.out:
        record = {"command": shlex.join([sys.executable, *sys.argv]),
                  "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "machine": f"{platform.machine()} {os.cpu_count()} cores", "threads": args.threads, "rows": rows}
        write_json(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
