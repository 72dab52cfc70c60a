"""`cometlm eval table`: the README's comparison table from result files, one row per method.

Reads the summaries `cometlm eval passkey`, `niah`, `ppl` and every other retrieval grid (the task suites: `ruler-*`,
`babilong-*`, `user-qa`, `agent-qa`) write (their folders or the JSON files) and prints a markdown table: per method
and model, accuracy per context length of each grid task, held-out perplexity, the time each took and the peak
resident memory. Rows are keyed by (method, window, sink tokens, model), so the
three results of one method land in one row. Below the table, one line per result says which grid or documents
it covers, with an asterisk on results that are not complete. `--plot` draws the same rows: accuracy against
context length for passkey and NIAH, and perplexity per position bucket.
"""

from __future__ import annotations

import json
from pathlib import Path

from cometlm.evaluation.grid import length_label, trials_label

TASKS = ("passkey", "niah", "ppl")  # first in the table, in this order; other grid tasks follow by name
TITLES = {"passkey": "passkey", "niah": "NIAH", "ppl": "ppl"}


def is_result(summary) -> bool:
    """Whether a JSON value is a summary this table reads: a retrieval grid's or perplexity's."""
    return isinstance(summary, dict) and isinstance(summary.get("task"), str) and (
        summary["task"] == "ppl" or {"accuracy_by_length", "cells", "config"} <= summary.keys())


def load_results(paths) -> list[dict]:
    """The summaries in the given folders (every TASK.json of a retrieval grid or perplexity there) or JSON files."""
    summaries = []
    for path in map(Path, paths):
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        found = []
        for file in files:
            summary = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
            if is_result(summary) and (file.stem == summary["task"] or not path.is_dir()):
                summary["_file"] = str(file)
                found.append(summary)
            elif not path.is_dir():
                raise ValueError(f"{file} is not a retrieval grid or ppl result (task "
                                 f"{summary.get('task') if isinstance(summary, dict) else None!r})")
        if not found:
            raise FileNotFoundError(
                f"{path} holds no result: give folders written by `cometlm eval passkey|niah|ppl|ruler-...` or their "
                "JSON files"
            )
        summaries += found
    return summaries


def _grid_tasks(summaries) -> list[str]:
    present = {s["task"] for s in summaries if s["task"] != "ppl"}
    return [t for t in TASKS if t in present] + sorted(present - set(TASKS))


def _title(task: str) -> str:
    return TITLES.get(task, task)


def _row_key(summary: dict) -> tuple:
    """(method, window, sinks, split, model name): a task suite's validation results are a row of their own (the
    split is "" for what evaluation holds out: a suite's test split, perplexity's held-out text)."""
    config = summary["config"]
    split = "validation" if config.get("split") == "validation" else ""
    return summary["method"], config.get("window"), config.get("sink_tokens"), split, summary["model"]["name"]


def _split_cell(split: str) -> str:
    return f" [{split} split]" if split else ""


def _with_lora(summaries) -> str:
    """" + LoRA" for a backbone method that read with a CoMeT adapter's LoRA (its memories unused), else ""."""
    return " + LoRA" if any(s["method"] not in ("comet", "no-memory") and s["model"].get("lora_checksum") is not None
                            for s in summaries) else ""


def _method_cell(method: str, window, sink_tokens) -> str:
    if method == "sliding-window":
        return f"sliding-window ({sink_tokens} sink + {window})"
    if method in ("full", "truncated"):
        return f"{method} ({window})"
    return method


def _accuracy_cell(summary: dict | None, lengths: list[int], name_trials: bool) -> str:
    """Accuracy per length, with the trials per cell when the column's grids do not all have the same number."""
    if summary is None:
        return "-"
    by_length = {row["length"]: row["accuracy"] for row in summary["accuracy_by_length"]}
    values = ["-" if by_length.get(n) is None else f"{by_length[n]:.2f}" for n in lengths]
    trials = f" ({trials_label(summary['config'])})" if name_trials else ""
    return " / ".join(values) + ("" if summary["complete"] else "*") + trials


def _seconds_cell(summary: dict | None, lengths: list[int], label) -> str:
    """Seconds per trial at the grid's longest length, which is named when the table's columns go further."""
    if summary is None:
        return "-"
    longest = max(summary["config"]["lengths"])
    cells = [c for c in summary["cells"] if c["length"] == longest and c["done"]]
    done = sum(c["done"] for c in cells)
    if not done:
        return "-"
    return f"{sum(c['seconds'] for c in cells) / done:.1f}" + ("" if longest == max(lengths) else
                                                               f" ({label(longest)})")


# What makes two perplexities comparable besides the length: the text they were read on
PPL_TEXT = ("corpus", "documents", "seed", "heldout_fraction")


def _ppl_text(summary: dict) -> str:
    config = summary["config"]
    documents = config.get("documents")
    return (f"{config.get('corpus')}, {documents} document{'' if documents == 1 else 's'}, seed {config.get('seed')}"
            + (f", held out {config['heldout_fraction']:g}" if config.get("heldout_fraction") is not None else ""))


def _ppl_cells(summary: dict | None, name_length: bool, name_text: bool, label) -> list[str]:
    """Perplexity (with its document length when the table mixes lengths, and the text it read when the table mixes
    texts) and tokens per second."""
    if summary is None:
        return ["-", "-"]
    ppl = "-" if summary["ppl"] is None else f"{summary['ppl']:.3f}" + ("" if summary["complete"] else "*")
    named = ([label(summary["config"]["length"])] if name_length else []) + ([_ppl_text(summary)] if name_text else [])
    if named and summary["ppl"] is not None:
        ppl += f" ({'; '.join(named)})"
    speed = summary["cost"]["tokens_per_s"]
    return [ppl, "-" if speed is None else f"{speed:,.0f}"]


def _peak_rss(summary: dict) -> float:
    """The largest peak of a result, its cells' included: summaries from before `peak_rss_over` kept only the last
    process's peak when several processes (a resumed run) wrote the cells."""
    return max([summary["cost"]["peak_rss_mib"], *(c["peak_rss_mib"] for c in summary.get("cells", [])
                                                   if c.get("peak_rss_mib") is not None)])


def _model_cell(name: str) -> str:
    """A model folder under the working directory as a relative path, so the table reads the same anywhere."""
    path = Path(name)
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            pass
    return name


def _labeller(lengths: set[int]):
    """Short labels ("8k") for the lengths named in cells, or exact numbers when two of them would share one."""
    short = {length_label(n) for n in lengths}
    return length_label if len(short) == len(lengths) else str


def format_table(summaries: list[dict]) -> str:
    """The markdown table and the notes below it."""
    rows: dict[tuple, dict[str, dict]] = {}
    for summary in summaries:
        row = rows.setdefault(_row_key(summary), {})
        if summary["task"] in row:
            raise ValueError(
                f"two {summary['task']} results for one method and model: {row[summary['task']]['_file']} and "
                f"{summary['_file']}; give one of them"
            )
        row[summary["task"]] = summary
    grids = _grid_tasks(summaries)
    lengths = {task: sorted({n for s in summaries if s["task"] == task for n in s["config"]["lengths"]})
               for task in grids}
    mixed_trials = {task: len({trials_label(s["config"]) for s in summaries if s["task"] == task}) > 1
                    for task in grids}
    header = ["method", "model"]
    for task in grids:
        labels = [length_label(n) for n in lengths[task]]
        if len(set(labels)) < len(labels):  # 8000 and 8192 are both "8k"
            labels = [str(n) for n in lengths[task]]
        header += [f"{_title(task)} acc. ({' / '.join(labels)})", f"{_title(task)} s/trial (longest)"]
    has_ppl = any(s["task"] == "ppl" for s in summaries)
    ppl_lengths = {s["config"]["length"] for s in summaries if s["task"] == "ppl"}
    ppl_texts = {tuple(s["config"].get(k) for k in PPL_TEXT) for s in summaries if s["task"] == "ppl"}
    label = _labeller({*(n for task in grids for n in lengths[task]), *ppl_lengths})
    if has_ppl:
        header += ["ppl", "ppl tok/s"]
    header.append("peak RSS (MiB)")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for (method, window, sinks, split, name), row in rows.items():
        cells = [_method_cell(method, window, sinks) + _with_lora(row.values()) + _split_cell(split), _model_cell(name)]
        for task in grids:
            cells += [_accuracy_cell(row.get(task), lengths[task], mixed_trials[task]),
                      _seconds_cell(row.get(task), lengths[task], label)]
        if has_ppl:
            cells += _ppl_cells(row.get("ppl"), len(ppl_lengths) > 1, len(ppl_texts) > 1, label)
        cells.append(f"{max(_peak_rss(s) for s in row.values()):,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for summary in summaries:
        lines.append(f"- {_note(summary)}")
    if any(not s["complete"] for s in summaries):
        lines.append("- \\* not complete: the value covers the finished trials or documents only")
    lines.append("- peak RSS: the largest of the row's results, each the whole process's ru_maxrss (model included)")
    return "\n".join(lines)


def _legend_names(keys) -> dict:
    """Each row's model for a legend: its folder's name, or its whole path where another model's folder has the
    same name (ablations trained with one recipe all end in `passkey-v2g/final`)."""
    paths = {key: _model_cell(key[-1]) for key in keys}
    folders: dict[str, set] = {}
    for path in paths.values():
        folders.setdefault(Path(path).name, set()).add(path)
    return {key: path if len(folders[Path(path).name]) > 1 else Path(path).name for key, path in paths.items()}


def _row_label(summary: dict, names: dict) -> str:
    key = _row_key(summary)
    method, window, sinks, split, _ = key
    return f"{_method_cell(method, window, sinks)}{_with_lora([summary])}{_split_cell(split)}, {names[key]}"


MARKERS = "osD^vP<X>*dh"  # one per row, with the colours C0-C9: rows stay distinct past ten
DODGE_POINTS = 3.0  # how far apart neighbouring rows are drawn on the accuracy panels


def comparison_figure(summaries: list[dict]):
    """The table's rows as lines: accuracy against context length (passkey, NIAH) and loss per position bucket
    (perplexity), one panel per task present; a row keeps its colour and marker in every panel. Rows often score
    the same accuracy, so on the accuracy panels each row is drawn a few points to the side of the next (its data
    stays at the true lengths), and equal points stay visible side by side."""
    from matplotlib.figure import Figure
    from matplotlib.transforms import ScaledTranslation

    tasks = _grid_tasks(summaries) + (["ppl"] if any(s["task"] == "ppl" for s in summaries) else [])
    keys = list(dict.fromkeys(_row_key(s) for s in summaries))
    colours = {key: f"C{i % 10}" for i, key in enumerate(keys)}
    markers = {key: MARKERS[i % len(MARKERS)] for i, key in enumerate(keys)}
    names = _legend_names(keys)
    sideways = {key: (i - (len(keys) - 1) / 2) * DODGE_POINTS / 72 for i, key in enumerate(keys)}  # inches
    fig = Figure(figsize=(5.2 * len(tasks), 4.6), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        for summary in (s for s in summaries if s["task"] == task):
            key = _row_key(summary)
            style = dict(color=colours[key], marker=markers[key], markersize=5, linestyle="-" if summary["complete"]
                         else ":")
            if task != "ppl":
                style["transform"] = ax.transData + ScaledTranslation(sideways[key], 0, fig.dpi_scale_trans)
            if task == "ppl":
                points = [((b["start"] + b["end"]) / 2, b["loss"]) for b in summary["buckets"] if b["loss"] is not None]
            else:
                points = [(r["length"], r["accuracy"]) for r in summary["accuracy_by_length"]
                          if r["accuracy"] is not None]
            if points:
                ax.plot(*zip(*points), label=_row_label(summary, names), **style)
        if task == "ppl":
            ax.set_xlabel("position in the document (tokens)")
            ax.set_ylabel("next-token loss (nats)")
            ax.set_title("held-out perplexity: loss per position bucket", fontsize=10)
        else:
            ax.set_xscale("log", base=2)
            lengths = sorted({n for s in summaries if s["task"] == task for n in s["config"]["lengths"]})
            ax.set_xticks(lengths, [length_label(n) for n in lengths])
            ax.set_xlim(lengths[0] / 1.5, lengths[-1] * 1.5)  # the shifted lines do not widen the limits
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("context length (tokens)")
            ax.set_ylabel("accuracy")
            ax.set_title(f"{_title(task)}: accuracy by context length", fontsize=10)
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes:
        for line in ax.get_lines():
            handles.setdefault(line.get_label(), line)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=min(3, len(handles)), fontsize=8)
    return fig


def _note(summary: dict) -> str:
    config, method = summary["config"], summary["method"]
    reads = config.get("reads") or config.get("layout")
    if summary["task"] == "ppl":
        what = (f"ppl: {config['documents']} held-out {config['corpus']} windows of {config['length']} tokens, "
                f"seed {config['seed']}")
    else:
        what = (f"{_title(summary['task'])}: lengths {', '.join(length_label(n) for n in config['lengths'])} x depths "
                f"{', '.join(f'{d:g}' for d in config['depths'])} x {trials_label(config)}, seed {config['seed']}")
        if config.get("split") == "validation":
            what += ", validation split"
        if config.get("options"):  # a task suite's options, e.g. needles 4, haystack essays
            what += " (" + ", ".join(f"{k} {v!r}" if v == "" else f"{k} {v}" for k, v in config["options"].items()) + ")"
    unit = "document" if summary["task"] == "ppl" else "trial"

    def counted(tally: dict, quote: bool) -> str:
        return ", ".join(f"{f'`{v}`' if quote and v != 'unknown' else v} ({n} {unit}{'s' if n != 1 else ''})"
                         for v, n in tally.items())

    commands = summary["environment"].get("commands")
    if commands and list(commands) != ["unknown"]:
        ran = ("command " if len(commands) == 1 else "commands ") + counted(commands, quote=True)
    else:  # results from before each record kept its command: the last run's
        ran = f"last command `{summary['environment']['command']}`"
    threads = summary["cost"].get("threads")
    if threads:
        ran += "; torch threads " + counted(threads, quote=False)
    return f"{method} ({reads}), {what}: `{summary['_file']}`; {ran}"
