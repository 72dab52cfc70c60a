"""Retrieval grids (passkey, needle in a haystack, the task suites of `evaluation.suites`): context lengths x needle
depths x trials, one method.

Each trial builds a prompt of exactly `length` tokens with the needle at `depth` percent of the haystack (the
builders in `tasks`, the format training uses), lets the method read it and generate greedily, and scores the text
with the task's matcher. A task with options (the number of needles, the haystack, ...) is bound to their values
first (`RetrievalTask.bind`); they are recorded with every trial. Trial t of a cell draws from `random.Random(f"{seed}/{length}/{depth}/{t}")`,
so a cell's prompts do not depend on the rest of the grid, and every method sees the same prompts.

Everything goes to one folder: `trials.jsonl` (one line per finished trial, flushed, so a killed run loses at
most the trial in flight and a rerun skips what is done), the task's summary JSON and heatmap PNG, rewritten
atomically after every cell. Heavy libraries are imported inside the functions so `cometlm --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import random
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from cometlm.evaluation.methods import build_method, model_info
from cometlm.evaluation.settings import DEFAULT_PRIME_TOKENS, DEFAULT_SINK_TOKENS, SNAPSHOT_SECONDS
from cometlm.files import write_figure, write_json
from cometlm.evaluation.results import (
    RSS_NOTE,
    append_record,
    cost_fields,
    environment,
    load_records,
    peak_rss_over,
    tally,
    utc_now,
)

TRIALS_FILE = "trials.jsonl"
SNAPSHOT_DIR = "partial"  # the memory of a trial being read, saved every few minutes; deleted when it finishes
TRIAL_KEY = ("length", "depth", "trial")
BATCH_MAX_TOKENS = 65536  # longer trials are read one at a time, with snapshots


@dataclass(frozen=True)
class RetrievalTask:
    """What differs between retrieval grids: the prompt builder, the scoring, the names of the files."""

    name: str  # "passkey": the summary's "task" and the file names' stem
    title: str  # for the heatmap
    needle: str  # what sits at the depth, for the axis label: "key", "needle"
    build: Callable  # (tokenizer, n_tokens, depth in [0, 1], rng) -> tasks.RetrievalSample
    matches: Callable  # (generated text, sample) -> bool
    extra_tokens: int  # generated beyond the expected answer's length
    scoring: str  # one line for the summary's config
    help: str = ""  # one line for `cometlm eval --help`
    description: str = ""  # the task's `cometlm eval TASK --help` text
    record: Callable = lambda sample: {}  # task-specific fields of a trial record
    config: dict = field(default_factory=dict)  # task-specific fields of the summary's config
    options: tuple = ()  # `tasks.suite.Option`s: keywords of `build` that `bind` sets, --flags of the command
    settings: dict = field(default_factory=dict)  # the options bound into `build`: part of what makes trials comparable
    depths: tuple = (0, 25, 50, 75, 100)  # the command's default depths
    check: Callable = lambda values: values  # raises on option values `build` would refuse (before any model loads)

    def bind(self, **values) -> "RetrievalTask":
        """The task with option values fixed in `build`, recorded in the summary's config and with every trial (a
        results folder of other values is refused). Values `check` refuses raise here."""
        known = [o.name for o in self.options]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{self.name} has no option {', '.join(unknown)}; its options are "
                             f"{', '.join(known) or 'none'}")
        self.check(values)
        settings = {**self.settings, **values}
        return replace(self, build=functools.partial(self.build, **values), settings=settings,
                       config={**self.config, "options": settings})

    @property
    def summary_file(self) -> str:
        return f"{self.name}.json"

    @property
    def heatmap_file(self) -> str:
        return f"{self.name}.png"


def check_grid(lengths, depths, trials, trials_at: dict | None = None) -> tuple[list[int], list[int | float]]:
    """Validated, sorted, de-duplicated lengths (tokens) and depths (percent, an int where whole). ``trials_at``
    ({length: trials}) gives some of the lengths another number of trials per cell than ``trials``."""
    for count in (trials, *(trials_at or {}).values()):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"trials must be an integer of at least 1 (got {count!r})")
    lengths, depths = list(lengths), list(depths)
    if set(trials_at or {}) - set(lengths):
        raise ValueError(f"trials are given for lengths that are not in the grid: "
                         f"{sorted(set(trials_at) - set(lengths))} (lengths {sorted(set(lengths))})")
    if not lengths or not depths:
        raise ValueError("give at least one context length and at least one depth")
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"context lengths must be positive token counts (got {n!r})")
    for d in depths:
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 100:
            raise ValueError(
                f"depths are percentages of the haystack before the key, from 0 (start) to 100 (end) (got {d!r})"
            )
    return sorted(set(lengths)), sorted({int(d) if float(d).is_integer() else float(d) for d in depths})


def cell_trials(config: dict, length: int) -> int:
    """Trials per cell at ``length`` in a grid's config (its ``trials``, or ``trials_at`` where given)."""
    return int(config.get("trials_at", {}).get(str(length), config["trials"]))


def trials_label(config: dict) -> str:
    """"5 trials", or "5 trials (3 at 32k)" when some lengths have another number."""
    count = config["trials"]
    label = f"{count} trial{'' if count == 1 else 's'}"
    other = [f"{n} at {length_label(int(length))}" for length, n in config.get("trials_at", {}).items() if n != count]
    return label + (f" ({', '.join(other)})" if other else "")


def length_label(n: int) -> str:
    """2048 -> "2k", 1048576 -> "1M", 32000 -> "32k", 1500 -> "1500"."""
    for size, suffix in ((2**20, "M"), (2**10, "k"), (10**6, "M"), (10**3, "k")):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def method_label(summary: dict) -> str:
    """"comet (primed layout)", "truncated (last 8192 tokens)", ...: the method and what it read."""
    return f"{summary['method']} ({summary['config'].get('reads') or summary['config'].get('layout')})"


# --------------------------------------------------------------------------------------------------------------
# Heatmap and summary


def write_heatmap(path: Path, summary: dict, title: str, needle: str) -> None:
    """Accuracy per (length, depth) as colour, red (0) to green (1), with the value written in each cell;
    cells not run yet are grey, unfinished ones show how many trials they hold."""
    write_figure(path, lambda: _heatmap(summary, title, needle))


def _heatmap(summary: dict, title: str, needle: str):
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    config = summary["config"]
    lengths, depths = config["lengths"], config["depths"]
    acc = np.full((len(depths), len(lengths)), np.nan)
    fig = Figure(figsize=(max(1.1 * len(lengths) + 2.6, 5.0), 0.42 * len(depths) + 2.1), layout="constrained")
    ax = fig.add_subplot()
    cells = {(c["length"], c["depth"]): c for c in summary["cells"]}
    for i, depth in enumerate(depths):
        for j, length in enumerate(lengths):
            cell = cells[(length, depth)]
            if cell["done"] == 0:
                continue
            acc[i, j] = cell["accuracy"]
            wanted = cell_trials(config, length)
            label = f"{cell['accuracy']:.2f}" + ("" if cell["done"] == wanted else f"\n{cell['done']}/{wanted}")
            ax.text(j, i, label, ha="center", va="center", fontsize=8,
                    color="white" if not 0.15 <= cell["accuracy"] <= 0.85 else "black")
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(acc), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"{needle} depth (%)")
    mean = summary["mean_accuracy"]
    ax.set_title(
        f"{title}, mean {'-' if mean is None else f'{mean:.2f}'}\n{method_label(summary)}\n{summary['model']['name']}",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, label="accuracy")
    return fig


def _mean(records: list[dict]) -> float | None:
    return sum(r["correct"] for r in records) / len(records) if records else None


def _grid(config: dict):
    for length in config["lengths"]:
        for depth in config["depths"]:
            for trial in range(cell_trials(config, length)):
                yield length, depth, trial


def summarize(task: RetrievalTask, done: dict[tuple, dict], config: dict, run: dict, model: dict,
              env: dict) -> dict:
    """The summary JSON from the finished trials of the requested grid (trials outside it are ignored)."""
    from cometlm.runtime import peak_rss_mib

    cells, by_length = [], []
    for length in config["lengths"]:
        row = []
        for depth in config["depths"]:
            records = [done[k] for t in range(cell_trials(config, length)) if (k := (length, depth, t)) in done]
            seconds = sum(r["seconds"] for r in records)
            cells.append({
                "length": length, "depth": depth, "done": len(records), "correct": sum(r["correct"] for r in records),
                "accuracy": _mean(records), "seconds": round(seconds, 3),
                "tokens_per_s": round(sum(r["read_tokens"] for r in records) / seconds, 1) if seconds > 0 else None,
                "peak_rss_mib": max((r["peak_rss_mib"] for r in records), default=None),
            })
            row += records
        by_length.append({"length": length, "label": length_label(length), "done": len(row), "accuracy": _mean(row)})
    every = [done[k] for k in _grid(config) if k in done]
    return {
        "task": task.name,
        "method": run["method"],
        "complete": len(every) == len(list(_grid(config))),
        "config": config,
        "model": model,
        "cells": cells,
        "accuracy_by_length": by_length,
        "mean_accuracy": _mean(every),
        "cost": {
            "trial_seconds": round(sum(r["seconds"] for r in every), 3),
            "peak_rss_mib": peak_rss_over(every, peak_rss_mib()),
            "threads": tally(every, "threads"),
            "note": RSS_NOTE,
        },
        "environment": {**env, "written_utc": utc_now(), "commands": tally(every, "command")},
        "files": {"trials": TRIALS_FILE, "heatmap": task.heatmap_file},
    }


def format_table(summary: dict) -> str:
    """Accuracy per depth (rows) and length (columns), with the mean per length underneath."""
    config = summary["config"]
    cells = {(c["length"], c["depth"]): c["accuracy"] for c in summary["cells"]}

    def cell(value) -> str:
        return f"{'-' if value is None else f'{value:.2f}':>7}"

    lines = ["depth % " + "".join(f"{length_label(n):>7}" for n in config["lengths"])]
    for depth in config["depths"]:
        lines.append(f"{depth:<8g}" + "".join(cell(cells[(n, depth)]) for n in config["lengths"]))
    lines.append("mean    " + "".join(cell(row["accuracy"]) for row in summary["accuracy_by_length"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# The grid


def evaluate_grid(
    task: RetrievalTask,
    model,
    tokenizer,
    lengths,
    depths,
    trials: int,
    seed: int,
    out_dir,
    method: str = "comet",
    layout: str = "primed",
    prime_tokens: int = DEFAULT_PRIME_TOKENS,
    window: int | None = None,
    sink_tokens: int = DEFAULT_SINK_TOKENS,
    progress: bool = True,
    model_name: str | None = None,
    command: str | None = None,
    snapshot_every: float = SNAPSHOT_SECONDS,
    batch: bool = True,
    trials_at: dict[int, int] | None = None,
) -> dict:
    """Runs the grid of `task` on a `CometForCausalLM` with one method and returns the summary it writes.

    `trials` prompts per cell, or `trials_at[length]` at the lengths it names (e.g. fewer at the longest).
    `depths` are percentages (0 = needle at the start of the haystack, 100 = at its end). `method` is one of
    `methods.METHODS`; `layout` and `prime_tokens` apply to comet and no-memory, `window` to full, truncated and
    sliding-window, `sink_tokens` to sliding-window (see `methods.build_method`). Trials already in
    `out_dir/trials.jsonl` are skipped; a file from a run with other settings is refused. The memory methods save
    the state of a trial's read to `out_dir/partial/` every `snapshot_every` seconds, so a rerun continues a
    long trial (a million tokens) where it stopped; the file is deleted when the trial is recorded. With `batch`,
    a cell's trials of at most BATCH_MAX_TOKENS are read and answered as one batch where the method can
    (`Method.answer_batch`; each gets the answer it gets alone), and share the batch's time.
    """
    import torch
    from tqdm.auto import tqdm

    from cometlm.evaluation.streaming import Snapshot
    from cometlm.generation import end_token_ids

    lengths, depths = check_grid(lengths, depths, trials, trials_at)
    reader = build_method(method, model, layout, prime_tokens, window, sink_tokens)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer (got {seed!r})")
    if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, (int, float)) or not snapshot_every > 0:
        raise ValueError(f"snapshot_every must be a positive number of seconds (got {snapshot_every!r})")

    # Everything that can be wrong with the arguments is found before a file is touched.
    probe = {}
    for length in lengths:
        try:
            probe[length] = task.build(tokenizer, length, depths[0] / 100, random.Random(f"{seed}/{length}/probe"))
        except ValueError as err:
            raise ValueError(f"context length {length}: {err}") from None
    answer_room = len(probe[lengths[0]].answer_ids) + task.extra_tokens
    reader.check_prompt(lengths[-1], len(probe[lengths[-1]].question_ids), answer_room)
    reader.check_prompt(lengths[0], len(probe[lengths[0]].question_ids), answer_room)
    info = model_info(model, reader, model_name)
    # What makes two trials comparable: a trials.jsonl that holds trials with other values belongs to another run.
    run = {"task": task.name, "method": method, **reader.settings(), "seed": seed, "model_id": info["id"],
           **({"task_options": task.settings} if task.settings else {}),
           **{key: task.config[key] for key in ("split", "draws", "generator") if key in task.config}}
    config = {"lengths": lengths, "depths": depths, "trials": trials, "seed": seed, "method": method,
              **({"trials_at": {str(n): trials_at[n] for n in sorted(trials_at)}} if trials_at else {}),
              **reader.settings(), "reads": reader.describe(), "extra_tokens": task.extra_tokens, "greedy": True,
              "scoring": task.scoring, **task.config}
    env = environment(command if command is not None else shlex.join(sys.argv), reader.device)
    eos = end_token_ids(model, tokenizer)

    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    trials_path = out_dir / TRIALS_FILE
    # Records from before a field existed: the test split; the task asked now (they cannot tell which wrote them).
    done = load_records(trials_path, run, TRIAL_KEY, f"{task.name} trial", implied={"split": "test", "task": task.name},
                        meaning={"generator": f"they were built by another version of the {task.name} generator, "
                                              "which made other prompts from the same seeds (docs/TASKS.md)"})
    for length, depth, trial in done:  # snapshots of trials recorded just before an interrupt
        _forget(_snapshot_path(out_dir, length, depth, trial))

    def write_outputs() -> dict:
        summary = summarize(task, done, config, run, info, env)
        write_json(out_dir / task.summary_file, summary)
        write_heatmap(out_dir / task.heatmap_file, summary, task.title, task.needle)
        return summary

    grid = list(_grid(config))
    finished = [done[k] for k in grid if k in done]
    summary, unwritten = None, bool(done)  # unwritten: the summary does not show every finished trial yet
    was_training = model.training
    model.eval()
    status = [f"acc {_mean(finished):.2f}"] if finished else []  # running accuracy, last trial's speed
    bar = tqdm(total=len(grid), initial=len(finished), desc=task.name, unit="trial", disable=not progress,
               dynamic_ncols=True)
    try:
        for length, depth in ((n, d) for n in config["lengths"] for d in config["depths"]):
            todo = [t for t in range(cell_trials(config, length)) if (length, depth, t) not in done]
            if not todo:
                continue
            # Short trials of a cell are read as one batch; a long one alone, saving snapshots as it reads.
            groups = [todo] if batch and length <= BATCH_MAX_TOKENS and len(todo) > 1 else [[t] for t in todo]
            for group in groups:
                chosen = [task.build(tokenizer, length, depth / 100, random.Random(f"{seed}/{length}/{depth}/{t}"))
                          for t in group]
                cell = f"{length_label(length)} @ {depth:g}% #{','.join(map(str, group))}"
                bar.set_postfix_str(", ".join([cell, *status]))
                max_new = [len(s.answer_ids) + task.extra_tokens for s in chosen]
                snapshot = Snapshot(_snapshot_path(out_dir, length, depth, group[0]),
                                    tag=json.dumps(run, sort_keys=True), every=snapshot_every)
                start = time.perf_counter()
                with torch.inference_mode():
                    if len(group) == 1:
                        answers = [reader.answer(chosen[0].prompt_ids, len(chosen[0].question_ids), max_new[0], eos,
                                                 progress, snapshot=snapshot)]
                    else:
                        answers = reader.answer_batch([s.prompt_ids for s in chosen],
                                                      [len(s.question_ids) for s in chosen], max_new, eos, progress)
                # The whole read over every run; a batch's time is shared by its trials.
                seconds = (time.perf_counter() - start + snapshot.resumed_seconds) / len(group)
                for trial, sample, (new_ids, facts) in zip(group, chosen, answers):
                    generated = tokenizer.decode(new_ids, skip_special_tokens=True)
                    record = {
                        **run, "length": length, "depth": depth, "trial": trial, **task.record(sample),
                        "generated": generated, "correct": task.matches(generated, sample),
                        "needle_start": sample.needle_start, **facts, "resumed_at": snapshot.resumed_tokens or None,
                        "batch": len(group), **cost_fields(seconds, facts["read_tokens"], env["command"]),
                    }
                    append_record(trials_path, record)
                    done[(length, depth, trial)] = record
                    finished.append(record)
                    bar.update()
                _forget(snapshot.path)
                unwritten = True
                status = [f"acc {_mean(finished):.2f}", f"{record['tokens_per_s']:,.0f} tok/s"]
                bar.set_postfix_str(", ".join([cell, *status]), refresh=False)
            summary, unwritten = write_outputs(), False  # the cell is complete
    finally:
        bar.close()
        model.train(was_training)
        if unwritten:  # also after an interrupt: the summary then shows every finished trial
            summary = write_outputs()
        elif created and not done and not any(out_dir.iterdir()):  # a grid that failed before its first trial
            out_dir.rmdir()
    return summary


def _snapshot_path(out_dir: Path, length: int, depth, trial: int) -> Path:
    return out_dir / SNAPSHOT_DIR / f"{length}-{depth:g}-{trial}.safetensors"


def _forget(path: Path) -> None:
    """Deletes a finished trial's snapshot, and the snapshot folder once it is empty."""
    path.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()
