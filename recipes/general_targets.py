#!/usr/bin/env python3
"""Issue 23's targets for a general adapter, one by one, from what ``recipes/general-eval-smollm2.sh OUT`` measured.

    python recipes/general_targets.py OUT [--out PREFIX]

Prints a table (target, what was measured, what the issue asks, verdict) and a second one with every task's
accuracy next to its baselines and full attention (the issue's upper reference), and writes both to PREFIX.md and
PREFIX.json. A target is "met" only when every cell it needs exists, is complete and has at least 5 trials;
otherwise it says what is missing. Reading only: nothing is measured here, and the standard library suffices.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

LENGTHS = (4096, 16384, 32768)
MIN_TRIALS = 5
DEPTHS = (50,)  # the suites' and the needles' grid (recipes/general-eval-smollm2.sh)
PASSKEY_DEPTHS = (0, 25, 50, 75, 100)
NEEDLE = 0.95  # passkey grid and single needles
QA1 = 0.9
MARGIN = 0.2  # over every efficient baseline, at 16k and 32k
LOGS = 0.8  # user-qa and agent-qa at 32k
SHORT = 1.05  # short-input perplexity against the base model's
BASELINES = ("no-memory", "truncated-cache", "sliding-window-cache")
# What the recipe gives each method that reads with a cache (CoMeT's 176 keys a token) and the truncation to 8k; a
# result read otherwise is not the baseline the issue names.
SETTINGS = {"truncated-cache": {"window": 176}, "sliding-window-cache": {"window": 44, "sink_tokens": 4},
            "sliding-window-cache-lora": {"window": 44, "sink_tokens": 4}, "truncated": {"window": 8192},
            "truncated-lora": {"window": 8192}}
# The held-out perplexity windows every perplexity target compares (recipes/general-eval-smollm2.sh)
PPL_WINDOWS = {"corpus": "bible", "length": 32768, "documents": 2, "seed": 0}
BEAT = ("babilong-qa2", "babilong-qa3", "babilong-qa4", "babilong-qa5", "ruler-niah-multikey",
        "ruler-niah-multivalue", "ruler-vt")
TASKS = ("ruler-niah-single", "ruler-niah-multikey", "ruler-niah-multivalue", "ruler-niah-multiquery", "ruler-vt",
         "babilong-qa1", *BEAT[:4], "user-qa", "agent-qa")
MET, NOT_MET, REPORTED = "met", "NOT MET", "reported"


class Missing(Exception):
    """A result the target needs is absent, incomplete or has too few trials (the message says which)."""


def label(n: int) -> str:
    return f"{n // 1000000}M" if n >= 1000000 else f"{n // 1024}k"


def summary(path: Path) -> dict:
    """The summary JSON of one finished evaluation (``cometlm eval`` writes TASK.json or ppl.json in its folder)."""
    if not path.is_file():
        raise Missing(f"no {path}")
    data = json.loads(path.read_text())
    if data.get("complete") is not True:
        raise Missing(f"{path} is not complete")
    return data


def grid(out: Path, task: str, method: str, folder: Path | None = None) -> dict:
    return summary((folder or out / "suites" / task / method) / f"{task}.json")


def accuracy(result: dict, length: int, trials: int = MIN_TRIALS, depths=DEPTHS) -> float:
    """Accuracy over the ``depths`` at ``length`` (the recipe's grid: each must have a cell, of at least ``trials``
    trials), of a run on the test split."""
    split = result.get("config", {}).get("split", "test")
    if split != "test":
        raise Missing(f"{result['task']} ({result['method']}) ran on the {split} split, not the test split")
    cells = [c for c in result["cells"] if c["length"] == length and c["depth"] in depths]
    absent = sorted(set(depths) - {c["depth"] for c in cells})
    if absent:
        raise Missing(f"{result['task']} ({result['method']}) has no cell at {label(length)} and depth "
                      f"{', '.join(f'{d:g}%' for d in absent)}")
    short = [c for c in cells if c["done"] < trials]
    if short:
        raise Missing(f"{result['task']} ({result['method']}) at {label(length)}: {short[0]['done']} trials in a "
                      f"cell, at least {trials} needed")
    return sum(c["correct"] for c in cells) / sum(c["done"] for c in cells)


def row(target: str, needed: str, check) -> dict:
    """One target: ``check()`` returns (measured text, met?) or raises Missing; met is None for what the issue asks
    to be reported, not to reach a bar (such a row is not counted among the targets)."""
    try:
        measured, ok = check()
        verdict = MET if ok is True else NOT_MET if ok is False else REPORTED
    except Missing as missing:
        measured, verdict = str(missing), "missing"
    return {"target": target, "measured": measured, "needed": needed, "verdict": verdict,
            "counted": needed != REPORTED}


def at_least(result: dict, floor: float, lengths=LENGTHS, depths=DEPTHS):
    values = [accuracy(result, n, depths=depths) for n in lengths]
    text = " / ".join(f"{v:.2f}" for v in values) + f" at {' / '.join(label(n) for n in lengths)}"
    return text, all(v >= floor for v in values)


def adapter(result: dict) -> tuple:
    """What says which adapter a result read with: its name and LoRA (the memory's own weights differ between comet
    and no-memory, which turns the memories off)."""
    model = result.get("model") or {}
    return model.get("name"), model.get("lora_checksum")


def alike(comet: dict, other: dict, method: str, keys=("seed", "options")) -> None:
    """Raises Missing unless ``other`` (a ``method`` result) read what ``comet`` read (the same ``keys`` of their
    configs, the same dtype), with the recipe's settings for ``method`` and, for no-memory, the same adapter."""
    what = f"{other.get('task', 'perplexity')} ({method})"
    mine, theirs = comet.get("config") or {}, other.get("config") or {}
    for key in keys:
        if mine.get(key) != theirs.get(key):
            raise Missing(f"{what} read with {key} {theirs.get(key)!r}, CoMeT with {mine.get(key)!r}: not comparable")
    if (comet.get("model") or {}).get("dtype") != (other.get("model") or {}).get("dtype"):
        raise Missing(f"{what} ran in another dtype than CoMeT: not comparable")
    for key, value in SETTINGS.get(method, {}).items():
        if theirs.get(key) != value:
            raise Missing(f"{what} read with {key} {theirs.get(key)!r}, the recipe's is {value!r}")
    if method in ("no-memory", "sliding-window-cache-lora", "truncated-lora") and adapter(other) != adapter(comet):
        raise Missing(f"{what} read with {adapter(other)[0]!r}, CoMeT with {adapter(comet)[0]!r}")


def comet_grid(out: Path, task: str, folder: Path | None = None, haystack: str | None = None) -> dict:
    """A grid of the adapter's: refused unless it read with the adapter (and the seed) of the suites' single-needle
    run, and, for a needle folder, in its ``haystack``."""
    result = grid(out, task, "comet", folder)
    reference = grid(out, "ruler-niah-single", "comet")
    if adapter(result) != adapter(reference):
        raise Missing(f"{task} read with {adapter(result)[0]!r}, the suites with {adapter(reference)[0]!r}")
    if (result.get("config") or {}).get("seed") != (reference.get("config") or {}).get("seed"):
        raise Missing(f"{task} ({folder or 'suites'}) read with another seed than the suites")
    read = ((result.get("config") or {}).get("options") or {}).get("haystack")
    if haystack is not None and not (read == haystack or haystack == "file:" and str(read).startswith("file:")):
        raise Missing(f"{folder} holds a run on the haystack {read!r}, not {haystack!r}")
    return result


def beats_baselines(out: Path, task: str):
    comet = comet_grid(out, task)
    for b in BASELINES:
        alike(comet, grid(out, task, b), b)
    parts, ok = [], True
    for n in LENGTHS[1:]:
        mine = accuracy(comet, n)
        best, name = max((accuracy(grid(out, task, b), n), b) for b in BASELINES)
        parts.append(f"{label(n)}: {mine:.2f} vs {best:.2f} ({name})")
        ok = ok and mine - best >= MARGIN - 1e-9
    return "; ".join(parts), ok


def perplexity(out: Path, name: str) -> float:
    """The perplexity of the run ``name``, read on the recipe's held-out windows as CoMeT's was."""
    comet = summary(out / "ppl" / "comet" / "ppl.json")
    config = comet.get("config") or {}
    wrong = {key: config.get(key) for key, value in PPL_WINDOWS.items() if config.get(key) != value}
    if wrong:
        raise Missing(f"CoMeT's perplexity read {wrong}, the recipe's windows are {PPL_WINDOWS}")
    result = comet if name == "comet" else summary(out / "ppl" / name / "ppl.json")
    alike(comet, result, name, keys=(*PPL_WINDOWS, "heldout_fraction", "bucket"))
    try:
        return float(result["ppl"])
    except (KeyError, TypeError, ValueError):
        raise Missing(f"{out / 'ppl' / name / 'ppl.json'} holds no perplexity") from None


def ppl_below(out: Path):
    comet = perplexity(out, "comet")
    others = {name: perplexity(out, name) for name in ("no-memory", "sliding-window-cache",
                                                       "sliding-window-cache-lora")}
    text = f"{comet:.2f} vs " + ", ".join(f"{name} {value:.2f}" for name, value in others.items())
    return text, all(comet < value for value in others.values())


def ppl_truncation(out: Path):
    comet = perplexity(out, "comet")
    ratios = {name: comet / perplexity(out, name) for name in ("truncated-lora", "truncated")}
    return ", ".join(f"{comet:.2f} / {name} = {r:.3f}" for name, r in ratios.items()), None


def short_inputs(out: Path):
    path = out / "short-ppl.json"
    if not path.is_file():
        raise Missing(f"no {path}")
    data = json.loads(path.read_text())
    results = data.get("results") or {}
    if not results:
        raise Missing(f"{path} holds no results")
    measured = data.get("comet")
    try:
        graded = summary(out / "passkey" / "comet" / "passkey.json").get("model", {}).get("name")
    except Missing:
        graded = None
    if measured is not None and graded is not None and measured != graded:
        raise Missing(f"{path} measured {measured}, the grids {graded}: delete it and rerun the recipe")
    try:
        text = ", ".join(f"{corpus} {r['comet_ppl']:.2f} / {r['base_ppl']:.2f} = {r['ratio']:.3f}"
                         for corpus, r in results.items())
    except (KeyError, TypeError, ValueError) as error:
        raise Missing(f"{path} does not hold both perplexities and their ratio for every corpus ({error!r})") from None
    return text, all(r["ratio"] <= SHORT for r in results.values())


def million(out: Path):
    result = comet_grid(out, "babilong-qa1", out / "qa1-1m")
    cells = [c for c in result["cells"] if c["length"] == 1000000]
    depths = sorted(c["depth"] for c in cells if c["done"] >= 1)
    if depths != [0, 50, 100]:
        raise Missing(f"babilong-qa1 at 1M: trials at depths {depths}, 0 / 50 / 100 needed")
    text = "; ".join(f"depth {c['depth']}%: {'correct' if c['correct'] else 'wrong'}, {c['seconds']:.0f} s, "
                     f"peak RSS {c['peak_rss_mib']:.0f} MiB" for c in sorted(cells, key=lambda c: c["depth"]))
    return text, None


def targets(out: Path) -> list[dict]:
    rows = [row("passkey grid", f">= {NEEDLE} at each length", lambda: at_least(comet_grid(
        out, "passkey", out / "passkey" / "comet"), NEEDLE, depths=PASSKEY_DEPTHS))]
    haystacks = {"essays": (out / "suites" / "ruler-niah-single" / "comet", "essays"),
                 "bible": (out / "needles" / "bible", "bible"), "noise": (out / "needles" / "noise", "noise"),
                 "a file never read": (out / "needles" / "file", "file:")}
    for name, (folder, haystack) in haystacks.items():
        rows.append(row(f"single needle, {name}", f">= {NEEDLE} at each length",
                        lambda folder=folder, haystack=haystack: at_least(comet_grid(
                            out, "ruler-niah-single", folder, haystack), NEEDLE)))
    rows.append(row("babilong-qa1", f">= {QA1} at each length",
                    lambda: at_least(comet_grid(out, "babilong-qa1"), QA1)))
    for task in BEAT:
        rows.append(row(task, f"every efficient baseline + {MARGIN} at 16k and 32k",
                        lambda task=task: beats_baselines(out, task)))
    for task in ("user-qa", "agent-qa"):
        rows.append(row(task, f">= {LOGS} at 32k", lambda task=task: at_least(comet_grid(out, task), LOGS,
                                                                            LENGTHS[-1:])))
    rows.append(row("perplexity, 2 held-out 32k Bible windows", "below no memory and the sliding window with "
                    "CoMeT's cache", lambda: ppl_below(out)))
    rows.append(row("perplexity against truncation to the last 8k", "reported", lambda: ppl_truncation(out)))
    rows.append(row("short inputs (one chunk, held out)", f"CoMeT / base <= {SHORT}", lambda: short_inputs(out)))
    rows.append(row("babilong-qa1 at 1,000,000 tokens (one trial at depths 0, 50, 100, with time and memory)",
                    REPORTED, lambda: million(out)))
    return rows


def reference(out: Path) -> list[dict]:
    """Every task's accuracy per length: the adapter, its baselines and full attention with its LoRA (4k)."""
    table = []
    for task in TASKS:
        entry = {"task": task}
        for method in ("comet", *BASELINES, "full-lora"):
            lengths = LENGTHS[:1] if method == "full-lora" else LENGTHS
            try:
                result = grid(out, task, method)
                entry[method] = [accuracy(result, n, trials=1) for n in lengths]
            except Missing:
                entry[method] = None
        table.append(entry)
    return table


def markdown(rows: list[dict], table: list[dict]) -> str:
    met = sum(r["verdict"] == MET for r in rows)
    judged = sum(r["counted"] for r in rows)
    lines = [f"Targets met: {met} of {judged}.", "", "| target | measured | issue asks | verdict |",
             "|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['measured']} | {r['needed']} | {r['verdict']} |" for r in rows]
    cell = lambda values: "-" if values is None else " / ".join(f"{v:.2f}" for v in values)  # noqa: E731
    lines += ["", f"Accuracy at {' / '.join(label(n) for n in LENGTHS)} (full attention with the adapter's LoRA: 4k, "
              "the prompts that fit its window):", "",
              "| task | CoMeT | " + " | ".join(BASELINES) + " | full-lora |", "|---|---|" + "---|" * len(BASELINES)
              + "---|"]
    lines += [f"| {t['task']} | " + " | ".join(cell(t[m]) for m in ("comet", *BASELINES, "full-lora")) + " |"
              for t in table]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    """Atomically: a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the OUT folder of recipes/general-eval-smollm2.sh")
    parser.add_argument("--out", type=Path, help="also write PREFIX.md and PREFIX.json")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"no folder {args.results}")
    rows, table = targets(args.results), reference(args.results)
    text = markdown(rows, table)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write(args.out.with_suffix(".md"), text)
        write(args.out.with_suffix(".json"), json.dumps({"targets": rows, "accuracy": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
