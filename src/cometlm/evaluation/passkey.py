"""The passkey grid (`cometlm eval passkey`): context lengths x key depths x trials with random keys.

Each trial builds a passkey prompt of exactly `length` tokens with the key at `depth` percent of the haystack
(`training.tasks.passkey_sample`, the format training uses), reads it, generates greedily the key's length plus
three tokens, and scores the text with `passkey_matches` (the first run of digits must be the key, so "482139"
does not pass for "48213").

Three methods, one schema, so their results tabulate side by side:
- comet: the model with its memories.
- no-memory: the same backbone and chunk size with both memories off, i.e. plain chunking; what it gets right
  comes from the open chunk alone.
- truncated: the plain backbone with full attention over the prompt's last tokens, so that prompt plus answer
  fit in its window.

Two layouts for the CoMeT methods: "fixed" cuts chunks of C from the start, as `generate(prompt)` does, so the
question may start a fresh chunk; "primed" (METHOD.md section 3) closes a short first chunk so that the open
chunk the answer is generated in holds the prompt's last tokens, the whole question and room for the answer.

Everything goes to one folder: `trials.jsonl` (one line per finished trial, flushed, so a killed run loses at
most the trial in flight and a rerun skips what is done), `passkey.json` and `passkey.png`, rewritten
atomically after every cell. Heavy libraries are imported inside the functions so `cometlm --help` stays fast.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

METHODS = ("comet", "no-memory", "truncated")
LAYOUTS = ("primed", "fixed")
TRIALS_FILE = "trials.jsonl"
SUMMARY_FILE = "passkey.json"
HEATMAP_FILE = "passkey.png"
EXTRA_TOKENS = 3  # generated beyond the key, so that a key followed by more digits is caught
DEFAULT_PRIME_TOKENS = 256
DEFAULT_WINDOW = 8192  # for a backbone whose config names no max_position_embeddings
READ_BAR_MIN_CHUNKS = 8  # a nested per-chunk reading bar only for reads at least this long
RSS_NOTE = (
    "peak_rss_mib is ru_maxrss of the whole process: it includes model loading and every earlier cell and never "
    "decreases, so only its growth from one cell to the next is attributable to a cell"
)
# What makes two trials comparable: a trials.jsonl that holds trials with other values belongs to another run.
RUN_FIELDS = ("method", "layout", "prime_tokens", "window", "seed", "model_id")


# --------------------------------------------------------------------------------------------------------------
# Checks and the layout


def check_grid(lengths, depths, trials) -> tuple[list[int], list[int | float]]:
    """Validated, sorted, de-duplicated lengths (tokens) and depths (percent, an int where whole)."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an integer of at least 1 (got {trials!r})")
    lengths, depths = list(lengths), list(depths)
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


def open_chunk_tokens(
    n_tokens: int, chunk_size: int, layout: str, question_tokens: int, answer_room: int,
    prime_tokens: int = DEFAULT_PRIME_TOKENS,
) -> int:
    """How many of the prompt's last tokens the open chunk holds when generation starts.

    "fixed": what is left after chunks of C from the start (C when the prompt is a multiple of C, so the first
    generated token closes that chunk and the answer starts a fresh one). "primed": the question plus up to
    `prime_tokens` context tokens before it, leaving `answer_room` free so the chunk never closes mid-answer.
    """
    if layout == "fixed":
        return n_tokens % chunk_size or chunk_size
    if layout != "primed":
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
    room = chunk_size - answer_room
    if room < question_tokens:
        raise ValueError(
            f"the primed layout needs the question ({question_tokens} tokens) and the answer ({answer_room} "
            f"tokens) in one chunk, but the chunk size is {chunk_size}; use a larger chunk size or layout 'fixed'"
        )
    return min(prime_tokens + question_tokens, room, n_tokens)


def without_memory(model):
    """The same backbone (shared, not copied) and chunk size with both memories off: plain chunking, where
    nothing crosses a chunk boundary. A learned attention sink is kept, since it is part of every chunk."""
    from cometlm.config import CometConfig
    from cometlm.model import CometForCausalLM

    config = model.comet_config
    plain = CometConfig(
        chunk_size=config.chunk_size, global_slots=0, temp_stride=0, temp_capacity=0,
        adapter_rank=config.adapter_rank, attention_sink=config.attention_sink, init_seed=config.init_seed,
    )
    weight = model.backbone.embed_tokens.weight
    bare = CometForCausalLM(model.backbone_model, plain, base_model=model.base_model, tokenizer=model.tokenizer)
    bare.memory.to(weight.device)
    if config.attention_sink:
        bare.memory.tokens.sink.data.copy_(model.memory.tokens.sink.data)
    return bare.eval()


def backbone_window(model, window: int | None) -> int:
    """The truncated baseline's window: the given one, else the backbone's max_position_embeddings."""
    if window is None:
        window = getattr(model.backbone.config, "max_position_embeddings", None) or DEFAULT_WINDOW
    return window


def length_label(n: int) -> str:
    """2048 -> "2k", 1048576 -> "1M", 32000 -> "32k", 1500 -> "1500"."""
    for size, suffix in ((2**20, "M"), (2**10, "k"), (10**6, "M"), (10**3, "k")):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


# --------------------------------------------------------------------------------------------------------------
# One trial


def _read(model, ids: list[int], state, progress: bool):
    """Streams ids into the memory; long reads go chunk by chunk under a nested bar (same state as one call)."""
    import torch
    from tqdm.auto import tqdm

    if not ids:
        return state
    c = model.comet_config.chunk_size
    tokens = torch.tensor([ids], device=model.backbone.embed_tokens.weight.device)
    if not progress or len(ids) < READ_BAR_MIN_CHUNKS * c:
        return model.ingest(tokens, state)
    with tqdm(total=len(ids), desc="reading", unit="tok", unit_scale=True, position=1, leave=False,
              dynamic_ncols=True) as bar:
        for start in range(0, len(ids), c):
            state = model.ingest(tokens[:, start : start + c], state)
            bar.update(min(c, len(ids) - start))
    return state


def answer_from_memory(model, prompt, question_tokens, max_new_tokens, layout, prime_tokens, eos, progress):
    """Reads the prompt in the layout's chunks and generates; returns (new ids, layout facts for the record).

    The context before the open chunk is read here (so long reads can show progress), the open chunk by
    `generate`; reading in pieces gives the same state as reading at once, so "fixed" is `generate(prompt)`.
    """
    import torch

    n, c = len(prompt), model.comet_config.chunk_size
    tail = open_chunk_tokens(n, c, layout, question_tokens, max_new_tokens, prime_tokens)
    first = (n - tail) % c  # a short first chunk, closed early, right-aligns every later chunk
    state = model.init_memory(1)
    if first:
        state = model.close_open_chunk(_read(model, prompt[:first], state, progress))
    state = _read(model, prompt[first : n - tail], state, progress)
    open_ids = torch.tensor([prompt[n - tail :]], device=model.backbone.embed_tokens.weight.device)
    out = model.generate(open_ids, memory=state, max_new_tokens=max_new_tokens, eos_token_id=eos)
    return out[0, tail:].tolist(), {"read_tokens": n, "first_chunk_tokens": first, "open_chunk_tokens": tail}


def _answer_truncated(backbone_model, prompt, max_new_tokens, window, eos):
    """Full attention over the prompt's last `window - max_new_tokens` tokens, so prompt and answer fit."""
    import torch

    kept = prompt[-(window - max_new_tokens) :]
    ids = torch.tensor([kept], device=next(backbone_model.parameters()).device)
    out = backbone_model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=eos, pad_token_id=eos if eos is not None else 0,
    )
    return out[0, len(kept) :].tolist(), {"read_tokens": len(kept), "first_chunk_tokens": None,
                                          "open_chunk_tokens": None}


# --------------------------------------------------------------------------------------------------------------
# Files


def _write_atomic(path: Path, write) -> None:
    """write(tmp_path) fills a temporary file next to `path`, which then replaces `path` in one step."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_trials(path: Path, run: dict) -> dict[tuple, dict]:
    """Finished trials by (length, depth, trial); refuses a file written by a run with other settings.

    A line cut short by a killed process (no final newline) is dropped, so appending can go on after it.
    """
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        _write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    done = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = (record["length"], record["depth"], record["trial"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path} line {number} is not a passkey trial record ({err}); move the file away") from None
        other = {f: (record.get(f), run[f]) for f in RUN_FIELDS if record.get(f) != run[f]}
        if other:
            diff = ", ".join(f"{f}: {was!r} there, {now!r} now" for f, (was, now) in other.items())
            raise ValueError(
                f"{path} holds trials of a different run ({diff}); use another output folder or delete that one"
            )
        done.setdefault(key, record)
    return done


def _append_trial(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_heatmap(path: Path, summary: dict) -> None:
    """Accuracy per (length, depth) as colour, red (0) to green (1), with the value written in each cell;
    cells not run yet are grey, unfinished ones show how many trials they hold."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    config = summary["config"]
    lengths, depths = config["lengths"], config["depths"]
    acc = np.full((len(depths), len(lengths)), np.nan)
    fig = Figure(figsize=(1.1 * len(lengths) + 2.6, 0.42 * len(depths) + 1.9), layout="constrained")
    ax = fig.add_subplot()
    cells = {(c["length"], c["depth"]): c for c in summary["cells"]}
    for i, depth in enumerate(depths):
        for j, length in enumerate(lengths):
            cell = cells[(length, depth)]
            if cell["done"] == 0:
                continue
            acc[i, j] = cell["accuracy"]
            label = f"{cell['accuracy']:.2f}" + ("" if cell["done"] == config["trials"] else f"\n{cell['done']}/{config['trials']}")
            ax.text(j, i, label, ha="center", va="center", fontsize=8,
                    color="white" if not 0.15 <= cell["accuracy"] <= 0.85 else "black")
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(acc), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("key depth (%)")
    how = {"truncated": f"last {config['window']} tokens"}.get(summary["method"], f"{config['layout']} layout")
    mean = summary["mean_accuracy"]
    ax.set_title(
        f"Passkey: {summary['method']} ({how}), mean {'-' if mean is None else f'{mean:.2f}'}\n{summary['model']['name']}",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, label="accuracy")
    _write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))


# --------------------------------------------------------------------------------------------------------------
# Summary


def _environment(command: str, device) -> dict:
    import torch
    import transformers

    import cometlm

    return {
        "command": command,
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cometlm": cometlm.__version__,
        },
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
    }


def _mean(records: list[dict]) -> float | None:
    return sum(r["correct"] for r in records) / len(records) if records else None


def summarize(done: dict[tuple, dict], config: dict, run: dict, model_info: dict, environment: dict) -> dict:
    """The summary JSON from the finished trials of the requested grid (trials outside it are ignored)."""
    from cometlm.cli import peak_rss_mib

    cells, by_length = [], []
    for length in config["lengths"]:
        row = []
        for depth in config["depths"]:
            records = [done[k] for t in range(config["trials"]) if (k := (length, depth, t)) in done]
            seconds = sum(r["seconds"] for r in records)
            cells.append({
                "length": length, "depth": depth, "done": len(records), "correct": sum(r["correct"] for r in records),
                "accuracy": _mean(records), "seconds": round(seconds, 3),
                "tokens_per_s": round(sum(r["read_tokens"] for r in records) / seconds, 1) if seconds > 0 else None,
                "peak_rss_mib": max((r["peak_rss_mib"] for r in records), default=None),
            })
            row += records
        by_length.append({"length": length, "label": length_label(length), "done": len(row), "accuracy": _mean(row)})
    every = list(done[k] for k in _grid(config) if k in done)
    return {
        "task": "passkey",
        "method": run["method"],
        "complete": len(every) == len(config["lengths"]) * len(config["depths"]) * config["trials"],
        "config": config,
        "model": model_info,
        "cells": cells,
        "accuracy_by_length": by_length,
        "mean_accuracy": _mean(every),
        "cost": {
            "trial_seconds": round(sum(r["seconds"] for r in every), 3),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "note": RSS_NOTE,
        },
        "environment": {**environment, "written_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        "files": {"trials": TRIALS_FILE, "heatmap": HEATMAP_FILE},
    }


def _grid(config: dict):
    for length in config["lengths"]:
        for depth in config["depths"]:
            for trial in range(config["trials"]):
                yield length, depth, trial


def _model_info(model, runner, method: str, model_name: str | None) -> dict:
    """What identifies the weights a trial ran with; its hash guards resuming against mixing models."""
    info = {"name": model_name or model.base_model or type(model.backbone_model).__name__,
            "base_model": model.base_model, "backbone": model.backbone.describe()}
    if method != "truncated":
        info["comet_config"] = runner.comet_config.to_dict()
        info["comet_checksum"] = round(sum(float(p.detach().double().sum()) for p in runner.memory.parameters()), 4)
    identity = {k: v for k, v in info.items() if k != "name"}
    info["id"] = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return info


# --------------------------------------------------------------------------------------------------------------
# The grid


def evaluate_passkey(
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
    progress: bool = True,
    model_name: str | None = None,
    command: str | None = None,
) -> dict:
    """Runs the passkey grid on a `CometForCausalLM` and returns the summary that `passkey.json` holds.

    `depths` are percentages (0 = key at the start of the haystack, 100 = at its end); trial t of a cell uses
    `random.Random(f"{seed}/{length}/{depth}/{t}")`, so a cell's keys do not depend on the rest of the grid.
    `method` is "comet", "no-memory" (the model with both memories off) or "truncated" (the plain backbone on
    the prompt's last `window` tokens minus the answer; default window: the backbone's max_position_embeddings).
    `layout` ("primed" or "fixed") and `prime_tokens` apply to the CoMeT methods. Trials already in
    `out_dir/trials.jsonl` are skipped; a file from a run with other settings is refused.
    """
    import torch
    from tqdm.auto import tqdm

    from cometlm.cli import peak_rss_mib
    from cometlm.training.tasks import passkey_matches, passkey_sample

    lengths, depths = check_grid(lengths, depths, trials)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
    if isinstance(prime_tokens, bool) or not isinstance(prime_tokens, int) or prime_tokens < 0:
        raise ValueError(f"prime_tokens must be an integer >= 0 (got {prime_tokens!r})")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer (got {seed!r})")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be a positive token count (got {window!r})")
    if method == "truncated":
        layout, prime_tokens, window = None, None, backbone_window(model, window)
    else:
        window, prime_tokens = None, prime_tokens if layout == "primed" else None

    # Everything that can be wrong with the arguments is found before a file is touched.
    probe = {}
    for length in lengths:
        try:
            probe[length] = passkey_sample(tokenizer, length, depths[0] / 100, random.Random(f"{seed}/{length}/probe"))
        except ValueError as err:
            raise ValueError(f"context length {length}: {err}") from None
    sample = probe[lengths[0]]
    answer_room = len(sample.answer_ids) + EXTRA_TOKENS
    if method == "truncated":
        if window <= answer_room:
            raise ValueError(f"window must exceed the answer's {answer_room} tokens (got {window})")
    else:
        open_chunk_tokens(lengths[0], model.comet_config.chunk_size, layout, len(sample.question_ids), answer_room,
                          prime_tokens or 0)
    runner = without_memory(model) if method == "no-memory" else model
    model_info = _model_info(model, runner, method, model_name)
    run = {"method": method, "layout": layout, "prime_tokens": prime_tokens, "window": window, "seed": seed,
           "model_id": model_info["id"]}
    config = {"lengths": lengths, "depths": depths, "trials": trials, "seed": seed, "method": method,
              "layout": layout, "prime_tokens": prime_tokens, "window": window, "extra_tokens": EXTRA_TOKENS,
              "greedy": True, "scoring": "first run of digits in the generated text equals the key"}
    device = model.backbone.embed_tokens.weight.device
    environment = _environment(command if command is not None else shlex.join(sys.argv), device)
    environment["started_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    eos = tokenizer.eos_token_id

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials_path = out_dir / TRIALS_FILE
    done = _load_trials(trials_path, run)

    def write_outputs() -> dict:
        summary = summarize(done, config, run, model_info, environment)
        text = json.dumps(summary, indent=2) + "\n"
        _write_atomic(out_dir / SUMMARY_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        write_heatmap(out_dir / HEATMAP_FILE, summary)
        return summary

    grid = list(_grid(config))
    finished = [done[k] for k in grid if k in done]
    summary, unwritten = None, True  # unwritten: passkey.json does not show every finished trial yet
    was_training = model.training
    model.eval()
    status = [f"acc {_mean(finished):.2f}"] if finished else []  # running accuracy, last trial's speed
    bar = tqdm(total=len(grid), initial=len(finished), desc="passkey", unit="trial", disable=not progress,
               dynamic_ncols=True)
    try:
        for length, depth, trial in grid:
            if (length, depth, trial) in done:
                continue
            sample = passkey_sample(tokenizer, length, depth / 100, random.Random(f"{seed}/{length}/{depth}/{trial}"))
            cell = f"{length_label(length)} @ {depth:g}% #{trial}"
            bar.set_postfix_str(", ".join([cell, *status]))
            max_new = len(sample.answer_ids) + EXTRA_TOKENS
            start = time.perf_counter()
            with torch.inference_mode():
                if method == "truncated":
                    new_ids, facts = _answer_truncated(model.backbone_model, sample.prompt_ids, max_new, window, eos)
                else:
                    new_ids, facts = answer_from_memory(runner, sample.prompt_ids, len(sample.question_ids), max_new,
                                                         layout, prime_tokens or 0, eos, progress)
            seconds = time.perf_counter() - start
            generated = tokenizer.decode(new_ids, skip_special_tokens=True)
            record = {
                **run, "length": length, "depth": depth, "trial": trial, "key": sample.answer,
                "generated": generated, "correct": passkey_matches(generated, sample.answer),
                "needle_start": sample.needle_start, **facts, "seconds": round(seconds, 4),
                "tokens_per_s": round(facts["read_tokens"] / seconds, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
            }
            _append_trial(trials_path, record)
            done[(length, depth, trial)] = record
            finished.append(record)
            unwritten = True
            status = [f"acc {_mean(finished):.2f}", f"{record['tokens_per_s']:,.0f} tok/s"]
            bar.set_postfix_str(", ".join([cell, *status]), refresh=False)
            bar.update()
            if all((length, depth, t) in done for t in range(trials)):  # the cell is complete
                summary, unwritten = write_outputs(), False
    finally:
        bar.close()
        model.train(was_training)
        if unwritten:  # also after an interrupt: the summary then shows every finished trial
            summary = write_outputs()
    return summary


# --------------------------------------------------------------------------------------------------------------
# Command line


def register(subparsers) -> None:
    """Adds `eval passkey` to the `cometlm` subcommands (argparse's `add_subparsers()` object)."""
    from cometlm.cli import _add_model_options

    evaluate = subparsers.add_parser(
        "eval", help="evaluate long-context retrieval and write JSON results with a figure",
        description="Evaluations that write JSON results and a figure to a folder; long runs resume.",
    )
    tasks = evaluate.add_subparsers(dest="task", required=True, metavar="TASK")
    passkey = tasks.add_parser(
        "passkey", help="passkey retrieval over a grid of context lengths x key depths x trials",
        description="The passkey test over a grid of context lengths x key depths x trials with random 5-digit "
        "keys, scored by whether the generated answer starts with the key. Writes trials.jsonl (one line per "
        "trial), passkey.json (config, versions, machine, accuracy per cell and per length, time, peak RSS) and "
        "passkey.png (accuracy heatmap) to --out, after every cell. Rerunning the same command resumes: finished "
        "trials are skipped. Compare --method comet with no-memory and truncated to see what the memory adds.",
    )
    passkey.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768], metavar="N",
                         help="context lengths in tokens, question included (default: 2048 8192 32768)")
    passkey.add_argument("--depths", type=float, nargs="+", default=[0, 25, 50, 75, 100], metavar="PCT",
                         help="where the key sits, in percent of the haystack before it: 0 = start, 100 = end "
                         "(default: 0 25 50 75 100)")
    passkey.add_argument("--trials", type=int, default=3, help="random keys per (length, depth) cell (default 3)")
    passkey.add_argument("--seed", type=int, default=0,
                         help="seed of the keys; trial t of a cell uses Random('SEED/LENGTH/DEPTH/t') (default 0)")
    passkey.add_argument("--method", choices=METHODS, default="comet",
                         help="comet: the model with its memories (default); no-memory: the same model with both "
                         "memories off (plain chunking); truncated: the plain backbone with full attention over the "
                         "prompt's last --window tokens")
    passkey.add_argument("--layout", choices=LAYOUTS, default="primed",
                         help="chunking of the prompt for comet and no-memory. primed (default): the open chunk the "
                         "answer is generated in holds the question, up to --prime-tokens context tokens before it "
                         "and room for the answer; fixed: chunks of --chunk-size from the start, as generate does")
    passkey.add_argument("--prime-tokens", type=int, default=DEFAULT_PRIME_TOKENS,
                         help=f"context tokens before the question in the open chunk with --layout primed "
                         f"(default {DEFAULT_PRIME_TOKENS})")
    passkey.add_argument("--window", type=int, default=None,
                         help="tokens the truncated baseline attends to, answer included (default: the backbone's "
                         f"max_position_embeddings, else {DEFAULT_WINDOW})")
    passkey.add_argument("--out", default=None, metavar="DIR",
                         help="results folder (default: runs/passkey/METHOD-LAYOUT, or runs/passkey/truncated); "
                         "a folder holding trials of other settings is refused")
    passkey.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_model_options(passkey)
    passkey.set_defaults(run=cmd_eval_passkey)


def default_out_dir(method: str, layout: str) -> Path:
    return Path("runs") / "passkey" / (method if method == "truncated" else f"{method}-{layout}")


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


def cmd_eval_passkey(args) -> int:
    from cometlm import cli
    from cometlm.bundled import BUNDLED_MODEL

    check_grid(args.lengths, args.depths, args.trials)  # before the model loads
    out = Path(args.out) if args.out else default_out_dir(args.method, args.layout)
    model = cli._load_model(args)
    try:
        summary = evaluate_passkey(
            model, model.tokenizer, args.lengths, args.depths, args.trials, args.seed, out, method=args.method,
            layout=args.layout, prime_tokens=args.prime_tokens, window=args.window, progress=not args.no_progress,
            model_name=args.comet or args.model or BUNDLED_MODEL, command=shlex.join(sys.argv),
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished trials are in {out / TRIALS_FILE}; run the same command again to resume",
              file=sys.stderr)
        return 130
    how = {"truncated": f"last {summary['config']['window']} tokens"}.get(
        args.method, f"{args.layout} layout")
    print(f"passkey accuracy, {args.method} ({how}), {summary['model']['name']}")
    print(format_table(summary))
    print(f"results in {out}: {SUMMARY_FILE}, {HEATMAP_FILE}, {TRIALS_FILE}", file=sys.stderr)
    return 0
