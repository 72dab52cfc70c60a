#!/usr/bin/env python
"""One picture of the general adapter's training so far (issue 23): every phase's validation probes and its
training loss per source, over the steps of all phases one after another.

Top: each probe task's accuracy at 2,048 tokens (5 trials, validation split, `probe_general.sh`) and their mean, at
every step a probe was run (`docs/results/general-probes/step-N` for g1, `gK-step-N` for the later phases). Bottom:
the training loss per source, weighted by each step's targets and averaged over 20 steps, from each phase's
`metrics.jsonl` (the carried copy in `docs/experiments/carry/general`, or `runs/general` where it is longer; losses per
source were logged from g2's step 210 on). Phase boundaries are the dotted lines. An A/B's control arm (g10x) is
not on that axis (it starts where its other arm does); `--table g10x` prints its losses.

    .venv/bin/python docs/experiments/plot_general.py [--out docs/results/general-probes/progress.png]
    .venv/bin/python docs/experiments/plot_general.py --table g8 [--window 30]   # one phase's losses as a table
    .venv/bin/python docs/experiments/plot_general.py --table g10c --against g10x  # an A/B's arms, cell by cell
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBES = ROOT / "docs/results/general-probes"
METRICS = (ROOT / "runs/general", ROOT / "docs/experiments/carry/general")  # the first that has a phase wins
# g8's rule runs g9 or g9m; g9m's g10 or g9g (then g10g); g10's g11, or the A/B g10c against g10x, then g11c (from
# g10c) or g11s (from g10x; on the axis after g10c, whose steps g10x repeats), and g11s's g12
PHASES = ("g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8", "g9", "g9m", "g9g", "g10", "g10g", "g11", "g10c", "g10x",
          "g11c", "g11s", "g12")
CONTROLS = ("g10x",)  # an A/B's control arm: its own --table, not a stretch of the all-phases step axis
PROBE_DIR = re.compile(r"^(?:(g\d+[a-z]?)-)?step-(\d+)$")  # step-N is g1's; suffixed folders are other experiments
WINDOW = 20


def short(source: str) -> str:
    """A mixture source's name for the legend: the task, the haystack where it is not the default, lm's corpus."""
    name, _, options = source.partition(":")
    if name == "lm":
        return f"lm/{options}"
    for haystack in ("bible", "noise"):
        if f"haystack={haystack}" in options:
            return f"{name}/{haystack}"
    return name


def phase_metrics(phase: str) -> list[dict]:
    """The phase's metrics rows from the longest of its copies."""
    copies = [folder / f"general-{phase}" / "metrics.jsonl" for folder in METRICS]
    rows = [[json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for path in copies if path.is_file()]
    return max(rows, key=len, default=[])


def probe_points(offsets: dict[str, int]) -> dict[str, list[tuple[int, float]]]:
    """Accuracy per task (and "mean") at each probed step, on the all-phases step axis."""
    points = defaultdict(list)
    for folder in sorted(PROBES.iterdir()):
        match = PROBE_DIR.match(folder.name)
        if not folder.is_dir() or not match or (match.group(1) or "g1") not in offsets:
            continue
        step = offsets[match.group(1) or "g1"] + int(match.group(2))
        scores = {}
        for result in folder.glob("*/*.json"):
            data = json.loads(result.read_text())
            if data.get("complete") and "mean_accuracy" in data:
                scores[data["task"]] = data["mean_accuracy"]
        if scores:
            for task, accuracy in scores.items():
                points[task].append((step, accuracy))
            points["mean"].append((step, sum(scores.values()) / len(scores)))
    return {task: sorted(values) for task, values in points.items()}


def windowed_losses(rows: list[dict], window: int) -> dict[tuple[str, int], float]:
    """{(source, window index): target-weighted training loss} of one phase's metrics rows, in windows of steps."""
    buckets = defaultdict(lambda: [0.0, 0])
    for row in rows:
        for source, loss in row.get("loss_by_source", {}).items():
            targets = row.get("targets_by_source", {}).get(source, 0)
            bucket = buckets[(short(source), (row["step"] - 1) // window)]
            bucket[0] += loss * targets
            bucket[1] += targets
    return {key: total / targets for key, (total, targets) in sorted(buckets.items()) if targets}


def loss_curves(runs: dict[str, list[dict]], offsets: dict[str, int]) -> dict[str, list[tuple[int, float]]]:
    """Per source, the target-weighted training loss averaged over WINDOW steps, on the all-phases step axis."""
    curves = defaultdict(list)
    for phase, rows in runs.items():
        for (name, window), loss in windowed_losses(rows, WINDOW).items():
            curves[name].append((offsets[phase] + (window + 0.5) * WINDOW, loss))
    return curves


def print_table(phase: str, rows: list[dict], window: int, against: tuple[str, list[dict]] | None = None) -> None:
    """The phase's training loss per source in windows of ``window`` steps, with each window's seconds a step;
    ``against`` (another phase's name and rows, the other arm of an A/B on the same batches) puts its loss over the
    same steps after each cell, as ``phase's / other's``."""
    losses = windowed_losses(rows, window)
    others = windowed_losses(against[1], window) if against else {}
    names = sorted({name for name, _ in losses})
    title = f"general-{phase}" + (f" / general-{against[0]}" if against else "")
    print(f"{title}: training loss per source (target-weighted), {window}-step windows")

    def cell(name: str, index: int) -> str:
        if (name, index) not in losses:
            return ""
        mine = f"{losses[(name, index)]:.2f}"
        if not against:
            return mine
        theirs = others.get((name, index))
        return f"{mine}/{theirs:.2f}" if theirs is not None else f"{mine}/-"  # "-": no such target there

    width = {name: max(len(name), 11 if against else 5) for name in names}
    print(f"{'steps':>9} {'s/step':>7} " + " ".join(f"{name:>{width[name]}}" for name in names))
    for index in sorted({w for _, w in losses}):
        inside = [row for row in rows if (row["step"] - 1) // window == index]
        seconds = [b["elapsed"] - a["elapsed"] for a, b in zip(inside, inside[1:]) if b["step"] == a["step"] + 1]
        pace = f"{sum(seconds) / len(seconds):7.0f}" if seconds else f"{'':>7}"
        print(f"{index * window + 1:>4}-{(index + 1) * window:<4} {pace} "
              + " ".join(f"{cell(n, index):>{width[n]}}" for n in names))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROBES / "progress.png")
    parser.add_argument("--table", metavar="PHASE", choices=PHASES,
                        help="print PHASE's training loss per source in windows of --window steps instead of a plot")
    parser.add_argument("--window", type=int, default=30, help="steps per window of --table (default 30)")
    parser.add_argument("--against", metavar="PHASE", choices=PHASES,
                        help="with --table: PHASE's loss over the same steps beside each cell (an A/B's other arm)")
    args = parser.parse_args(argv)
    if args.against and not args.table:
        parser.error("--against goes with --table")
    if args.table:
        if args.window < 1:
            parser.error("--window must be at least 1")
        found = {}
        for phase in filter(None, (args.table, args.against)):
            found[phase] = phase_metrics(phase)
            if not found[phase]:
                parser.error(f"no metrics of general-{phase} in {' or '.join(str(m) for m in METRICS)}")
        against = (args.against, found[args.against]) if args.against else None
        print_table(args.table, found[args.table], args.window, against)
        return 0

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {phase: rows for phase in PHASES if phase not in CONTROLS and (rows := phase_metrics(phase))}
    offsets, start = {}, 0
    for phase, rows in runs.items():
        offsets[phase] = start
        start += max(row["step"] for row in rows)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 8.5), sharex=True, height_ratios=(1, 1.3))
    for task, values in probe_points(offsets).items():
        steps, accuracy = zip(*values)
        mean = dict(color="black", linewidth=2.5, marker="o", zorder=3)
        style = mean if task == "mean" else dict(marker=".", alpha=0.7)
        top.plot(steps, accuracy, label=task, **style)
    top.set_ylabel("probe accuracy at 2,048 tokens\n(validation split, 5 trials)")
    top.set_ylim(-0.03, 1.03)
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    for name, values in sorted(loss_curves(runs, offsets).items()):
        steps, loss = zip(*values)
        bottom.plot(steps, loss, label=name, linestyle="--" if name.startswith("lm/") else "-")
    bottom.set_yscale("log")
    bottom.set_ylabel(f"training loss per source\n(nats per target token, {WINDOW}-step mean)")
    bottom.set_xlabel("training step, all phases one after another")
    bottom.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), title="(logged from g2 step 210 on)",
                  title_fontsize=8)
    for axis in (top, bottom):
        for phase, offset in offsets.items():
            axis.axvline(offset, color="grey", linestyle=":", linewidth=1)
            if axis is top:
                axis.text(offset + 5, 0.97, phase, fontsize=9, color="grey", va="top")
    fig.suptitle("The general adapter, phase by phase (recipes/general-smollm2.sh)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({', '.join(f'{p} {len(r)} steps' for p, r in runs.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
