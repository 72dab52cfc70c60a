#!/usr/bin/env python
"""A phase's rule, read from its measurements: does the answer's loss with the fact two or more chunks back (the
global memory's column of ``sizes/answer_loss.py``'s distance diagnostic) meet the thresholds fixed before the phase
ran (docs/EXPERIMENTS.md)?

    .venv/bin/python docs/experiments/rule_verdict.py DIR --global-at 2048=0.525 1024=0.65 [--sizes 128:16]
        [--probes-at-least 0.36] [--relative-to OTHER_DIR]

reads ``DIR/distance-LENGTH.json`` for each LENGTH (written by ``phase_rule.sh``), prints each length's mean over the
datasets next to its threshold, and writes ``DIR/verdict``: ``pass`` when every length's mean is at most its
threshold, ``fail`` otherwise. ``--probes-at-least`` adds a condition: the mean of the probes' scores in
``DIR/probe.txt`` (``probe_general.sh``'s lines, ``TASK mean SCORE``) at least that. With ``--relative-to``
each threshold is a factor of OTHER_DIR's mean at that length (``2048=0.9``: at most 0.9x the other run's), for a
rule that compares two arms measured alike (the same length, seed, sample count, dtype and sources, checked). A
missing, unreadable or non-finite measurement, or two arms measured differently, writes nothing and exits with
status 2, so a recipe that reads the verdict stops instead of guessing.
``--column`` picks another distance (open, queue, global); ``--verdict-name`` writes ``DIR/NAME`` instead of
``DIR/verdict``, for a rule with more than one condition read from one measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

COLUMNS = ("open", "queue", "global")


def threshold(text: str) -> tuple[int, float]:
    length, sep, value = text.partition("=")
    try:
        if not sep or int(length) <= 0 or not 0 <= float(value) < math.inf:
            raise ValueError
        return int(length), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LENGTH=MAX_LOSS such as 2048=0.525 (got {text!r})") from None


def column_mean(path: Path, sizes: str, column: str) -> float:
    """The mean over datasets of ``column``'s loss at ``sizes`` (C:K) in one distance diagnostic's JSON."""
    try:
        means = json.loads(path.read_text())["mean_by_distance"][sizes]
        mean = float(means[column])
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: run phase_rule.sh first") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} has no {column} mean at sizes {sizes} ({type(error).__name__}: {error})") from None
    if not math.isfinite(mean):  # a loss that diverged is no measurement: no verdict
        raise ValueError(f"{path}'s {column} mean at sizes {sizes} is {mean}, not a finite loss")
    return mean


# What two arms' diagnostics must share to be compared (answer_loss.py records each): the same samples of the same
# sources at the same length, read in the same dtype.
MEASURED_ALIKE = ("max_length", "seed", "samples", "dtype")


def measured_alike(a: Path, b: Path, sizes: str, length: int) -> None:
    """Raises ValueError unless the diagnostics ``a`` and ``b`` measured the same samples at ``length`` tokens."""
    chunk_size, _, rows = sizes.partition(":")

    def record(path: Path) -> dict:
        try:
            data = json.loads(path.read_text())
            sources = [row["data"] for row in data["rows"]
                       if (str(row["chunk_size"]), str(row["temp_capacity"])) == (chunk_size, rows)]
            return {**{key: data.get(key) for key in MEASURED_ALIKE}, "sources": sources}
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path} does not say what it measured ({type(error).__name__}: {error})") from None

    got, want = record(a), record(b)
    if got["max_length"] != length:
        raise ValueError(f"{a} measured at max_length {got['max_length']}, not {length}")
    differ = [key for key in got if got[key] != want[key]]
    if differ:
        said = "; ".join(f"{key} {got[key]!r} against {want[key]!r}" for key in differ)
        raise ValueError(f"{a} and {b} were not measured alike ({said}): their losses do not compare")


def probe_mean(path: Path) -> float:
    """The mean of the task scores in ``probe_general.sh``'s output (one ``TASK mean SCORE`` line per task)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: run phase_rule.sh first") from None
    scores = []
    for line in lines:
        fields = line.split()
        if len(fields) != 3 or fields[1] != "mean":
            raise ValueError(f"{path} has a line that is not 'TASK mean SCORE': {line!r}")
        try:
            scores.append(float(fields[2]))
        except ValueError:
            raise ValueError(f"{path} has a score that is not a number: {line!r}") from None
    if not scores:
        raise ValueError(f"{path} has no probe scores")
    return sum(scores) / len(scores)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="the folder phase_rule.sh wrote (distance-LENGTH.json)")
    parser.add_argument("--global-at", dest="limits", type=threshold, nargs="+", required=True,
                        metavar="LENGTH=MAX_LOSS", help="the rule's threshold at each length")
    parser.add_argument("--sizes", default="128:16", help="chunk size and temporary rows, as the diagnostic keys them")
    parser.add_argument("--column", choices=COLUMNS, default="global", help="which distance the rule reads")
    parser.add_argument("--probes-at-least", type=float, default=None, metavar="MEAN",
                        help="also require the mean of the probes' scores in DIR/probe.txt to be at least MEAN")
    parser.add_argument("--relative-to", type=Path, default=None, metavar="OTHER_DIR",
                        help="read each threshold as a factor of OTHER_DIR's mean at that length")
    parser.add_argument("--verdict-name", default="verdict", metavar="NAME",
                        help="the file in DIR the verdict is written to (default: verdict)")
    args = parser.parse_args(argv)
    if not args.verdict_name or Path(args.verdict_name).name != args.verdict_name or args.verdict_name in (".", ".."):
        parser.error(f"--verdict-name takes a file name, not a path (got {args.verdict_name!r})")
    if len({length for length, _ in args.limits}) != len(args.limits):
        parser.error("give each length once")

    def mean_at(folder: Path, length: int) -> float:
        return column_mean(folder / f"distance-{length}.json", args.sizes, args.column)

    try:
        limits, other = args.limits, {}
        if args.relative_to is not None:  # thresholds are factors of the other arm's means
            other = {length: mean_at(args.relative_to, length) for length, _ in limits}
            for length, _ in limits:
                measured_alike(args.dir / f"distance-{length}.json", args.relative_to / f"distance-{length}.json",
                               args.sizes, length)
            limits = [(length, factor * other[length]) for length, factor in limits]
        means = [(length, limit, mean_at(args.dir, length)) for length, limit in limits]
        probes = None if args.probes_at_least is None else probe_mean(args.dir / "probe.txt")
    except ValueError as error:
        print(f"rule_verdict: {error}", file=sys.stderr)
        return 2
    for length, limit, mean in means:
        against = f" = {dict(args.limits)[length]:g}x {other[length]:.3f}" if other else ""
        print(f"{args.column} loss at {length:>6,} tokens: {mean:.3f} (at most {limit:.3f}{against}: "
              f"{'met' if mean <= limit else 'missed'})")
    met = [mean <= limit for _, limit, mean in means]
    if probes is not None:
        met.append(probes >= args.probes_at_least)
        print(f"probes' mean (probe.txt): {probes:.3f} (at least {args.probes_at_least:.3f}: "
              f"{'met' if met[-1] else 'missed'})")
    verdict = "pass" if all(met) else "fail"
    print(verdict)
    partial = args.dir / f"{args.verdict_name}.partial"
    partial.write_text(verdict + "\n")
    os.replace(partial, args.dir / args.verdict_name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
