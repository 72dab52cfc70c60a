#!/usr/bin/env python
"""Runs of the passkey recipe (`recipes/passkey-smollm2.sh`) side by side: a table per run and one loss plot.

Every variant the recipe trains (comet and its ablations) reads the same samples in the same order (each phase's
data, seed and length are fixed by the recipe), so their losses at a step are comparable. Each run is given as
NAME=PATTERN, PATTERN naming a phase's metrics.jsonl with `{phase}` for the phase's name:

    .venv/bin/python docs/experiments/recipe_runs.py \\
        comet=docs/experiments/2026-11-29-{phase}-metrics.jsonl \\
        global-only=runs/abl-global-only/{phase}/metrics.jsonl --plot docs/results/ablations-loss.png

Prints, per run and phase: steps, tokens, wall time, and the mean loss over the phase's last 100 passkey steps (the
answer's tokens) and its last 100 language-model steps; then per run the totals. The plot draws the passkey steps'
loss. A step's data source is in the metrics of runs trained since `cometlm train` logged sources; since every run
reads the same samples, the others take the sources from those (and the script checks that the runs that logged
sources agree); steps whose source no run logged yet are left out of the losses. A phase is read up to the steps
the recipe runs (`--stop-at`, else `--max-steps`), keeping the last record of a step that a resumed run logged
twice; a phase not started yet is left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cometlm.training.metrics import read_metrics

# The recipe's phases in order, with the steps each runs.
PHASES = {"passkey-v1": 181, "passkey-v2a": 300, "passkey-v2b": 500, "passkey-v2d": 200, "passkey-v2e": 160,
          "passkey-v2f": 800, "passkey-v2g": 1000}
LAST = 100  # steps of a kind the end-of-phase losses are averaged over
SMOOTH = 50  # moving average of the plot


def phase_records(pattern: str, phase: str) -> list[dict]:
    path = Path(pattern.format(phase=phase))
    if not path.is_file():
        return []
    by_step = {r["step"]: r for r in read_metrics(path) if r["step"] <= PHASES[phase]}
    return [by_step[s] for s in sorted(by_step)]


def shared_sources(runs: dict) -> dict[tuple[str, int], tuple[str, ...]]:
    """(phase, step) -> the step's data sources, from every run that logged them; they must agree."""
    sources = {}
    for name, phases in runs.items():
        for phase, records in phases.items():
            for r in records:
                if "sources" in r:
                    known = sources.setdefault((phase, r["step"]), tuple(r["sources"]))
                    if known != tuple(r["sources"]):
                        raise SystemExit(f"{name} read other data at {phase} step {r['step']}: {r['sources']} "
                                         f"where another run read {list(known)}")
    return sources


def kind(sources: dict, phase: str, step: int) -> str | None:
    """"passkey" or "lm" for a step whose samples all came from passkey or from language-model sources."""
    names = sources.get((phase, step))
    if not names:
        return None
    kinds = {"passkey" if n.startswith("passkey") else "lm" for n in names}
    return kinds.pop() if len(kinds) == 1 else None


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "-"


def load(pattern: str) -> dict[str, list[dict]]:
    """A run's records per phase, from PATTERN with `{phase}` in it."""
    return {phase: phase_records(pattern, phase) for phase in PHASES}


def tables(runs: dict[str, dict]) -> str:
    """Markdown: per run, a table of its phases (steps, tokens, wall time, passkey and LM loss) and the totals."""
    sources = shared_sources(runs)
    lines = []
    for name, phases in runs.items():
        lines += ["", name, "", "| phase | steps | tokens | wall time | passkey loss | LM loss |",
                  "|---|---:|---:|---:|---:|---:|"]
        steps = tokens = seconds = 0
        for phase, records in phases.items():
            if not records:
                continue
            done = "" if records[-1]["step"] == PHASES[phase] else f" of {PHASES[phase]}"
            means = [_mean([r["loss"] for r in records if kind(sources, phase, r["step"]) == k][-LAST:])
                     for k in ("passkey", "lm")]
            lines.append(f"| {phase} | {records[-1]['step']}{done} | {records[-1]['tokens']:,} | "
                         f"{records[-1]['elapsed'] / 60:.0f} min | {' | '.join(means)} |")
            steps, tokens = steps + records[-1]["step"], tokens + records[-1]["tokens"]
            seconds += records[-1]["elapsed"]
        lines.append(f"| all | {steps:,} | {tokens:,} | {seconds / 3600:.1f} h | | |")
    return "\n".join(lines[1:])


def plot(runs: dict[str, dict], path) -> None:
    """The passkey steps' loss against the recipe's step (moving average), one line per run, phases marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sources = shared_sources(runs)
    figure = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    offset = 0
    for phase, steps in PHASES.items():
        axes.axvline(offset, color="0.85", lw=0.8)
        axes.text(offset + 5, 0.98, phase.removeprefix("passkey-"), transform=axes.get_xaxis_transform(),
                  va="top", fontsize=8, color="0.4")
        offset += steps
    for name, phases in runs.items():
        xs, losses, offset = [], [], 0
        for phase, records in phases.items():
            kept = [r for r in records if kind(sources, phase, r["step"]) == "passkey"]
            xs += [offset + r["step"] for r in kept]
            losses += [r["loss"] for r in kept]
            offset += PHASES[phase]
        window = [losses[max(0, i - SMOOTH + 1) : i + 1] for i in range(len(losses))]
        axes.plot(xs, [sum(w) / len(w) for w in window], label=name, lw=1.2)
    axes.set_yscale("log")
    axes.set_xlabel("recipe step (phases v1 to v2g)")
    axes.set_ylabel(f"passkey answer loss, moving average of {SMOOTH} steps")
    axes.set_title("The passkey recipe: CoMeT and its ablations on the same samples")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=PATTERN")
    parser.add_argument("--plot", help="write the loss against the recipe's step, one line per run, here")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        name, sep, pattern = spec.partition("=")
        if not sep or "{phase}" not in pattern:
            parser.error(f"{spec!r}: give NAME=PATTERN with {{phase}} in PATTERN")
        runs[name] = load(pattern)
    print(tables(runs))
    if args.plot:
        plot(runs, args.plot)
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
