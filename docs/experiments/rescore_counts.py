#!/usr/bin/env python
"""Re-scores stored trials of the count questions with the rule of session 35, and rewrites what they summarise.

Until 2026-12-06 the counts of user-qa (rating, returns) and agent-qa (lines, tests) were scored as whole words with
the numbers 0 to 9 as distractors, which let a date pass: " 2023-08-1" counted as the rating 1. They are scored now
as the passkey is, by the answer's first number (`tasks.sample.answer_matches(..., match="number")`, docs/TASKS.md).
Every trial keeps what the model generated, so this is exact: for each results folder under the given roots whose
summary is user-qa or agent-qa, the count trials of `trials.jsonl` are scored again; with ``--write`` the changed
records, the summary (cells, accuracies; the original cost and peak memory kept, a ``rescored`` note added) and the
heatmap are rewritten atomically. Without it, only the changes are printed. Nothing else is touched.

    .venv/bin/python docs/experiments/rescore_counts.py docs/results/suites runs/suites docs/results/general-probes \
        [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from cometlm.evaluation.grid import summarize, write_heatmap
from cometlm.evaluation.suites import grid_task
from cometlm.files import write_json, write_text
from cometlm.tasks import agent_trace, user_events
from cometlm.tasks.sample import answer_matches
from cometlm.tasks.suite import SPECS

COUNTS = {"user-qa": {k for k, m in user_events.MATCH.items() if m == "number"},
          "agent-qa": {k for k, m in agent_trace.MATCH.items() if m == "number"}}
RULE = "counts scored by the answer's first number (session 35); before: whole words, 0-9 as distractors"


def rescore(folder: Path, summary_path: Path, write: bool) -> list[str]:
    """The changes in one results folder (printed by the caller); rewrites it with ``write``."""
    old = json.loads(summary_path.read_text())
    task_name = old["task"]
    lines = (folder / "trials.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    changes = []
    for record in records:
        if record.get("kind") not in COUNTS[task_name]:
            continue
        correct = answer_matches(record["generated"], record["answers"], match="number")
        if correct != record["correct"]:
            changes.append(f"{folder}: {record['length']} @ {record['depth']} #{record['trial']} {record['kind']} "
                           f"{record['answers']} generated {record['generated'][:30]!r}: {record['correct']} -> "
                           f"{correct}")
            record["correct"] = correct
    if not changes or not write:
        return changes
    write_text(folder / "trials.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    task = grid_task(SPECS[task_name], old["config"].get("split", "test"))
    done = {(r["length"], r["depth"], r["trial"]): r for r in records}
    env = {k: v for k, v in old["environment"].items() if k not in ("written_utc", "commands")}
    new = summarize(task, done, old["config"], {"method": old["method"]}, old["model"], env)
    new["cost"]["peak_rss_mib"] = old["cost"]["peak_rss_mib"]  # the runs' own peak, not this script's
    new["rescored"] = {"date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "rule": RULE,
                       "changed_trials": len(changes), "accuracy_before": old["mean_accuracy"]}
    write_json(summary_path, new)
    write_heatmap(folder / task.heatmap_file, new, task.title, task.needle)
    return changes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders to search for results of user-qa and agent-qa")
    parser.add_argument("--write", action="store_true", help="rewrite the changed results (default: only print)")
    args = parser.parse_args(argv)
    found = 0
    for root in args.roots:
        if not root.is_dir():
            parser.error(f"no folder {root}")
        for trials in sorted(root.rglob("trials.jsonl")):
            for name in COUNTS:
                summary = trials.parent / f"{name}.json"
                if summary.is_file():
                    found += 1
                    for change in rescore(trials.parent, summary, args.write):
                        print(change)
    print(f"{found} results folders of user-qa and agent-qa read; " + ("rewritten where changed" if args.write else
                                                                       "nothing written (--write rewrites)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
