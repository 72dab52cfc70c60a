"""Long-document perplexity (`cometlm eval ppl`): next-token loss by position on held-out real text.

The documents are windows of `length` tokens from the held-out split of a bundled corpus: the last 5% of the
KJV Bible or of the Paul Graham essays (`tasks.corpora.CorpusWindows(split="heldout")`), which `cometlm train`
never reads. Document i is that dataset's window i, a function of (corpus, length, seed, i) only.

Each method gives the loss of every token from what it lets that token see of the text before it
(`evaluation.methods`); losses are summed per position bucket (target token i falls in bucket i // bucket), so
the line plot shows whether later tokens gain from earlier context: flat for a method that forgets, falling
for one that remembers. Buckets aggregate over documents token-weighted (sums and counts are stored, never
means of means).

Files in the output folder: `documents.jsonl` (one line per finished document, flushed, so a rerun resumes),
`ppl.json` (config, provenance, loss and perplexity per bucket and overall, time, peak RSS) and `ppl.png` (loss
by position; `--compare` adds the lines of other results of the same documents), rewritten after each document.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path

from cometlm.evaluation.grid import length_label, method_label
from cometlm.evaluation.settings import DEFAULT_SINK_TOKENS
from cometlm.evaluation.methods import build_method, model_info
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

DOCUMENTS_FILE = "documents.jsonl"
SUMMARY_FILE = "ppl.json"
PLOT_FILE = "ppl.png"
CORPORA = ("bible", "essays")
HELDOUT_FRACTION = 0.05  # CorpusLMDataset's default, the split `cometlm train` leaves out
SAME_DOCUMENTS = ("corpus", "heldout_fraction", "length", "bucket", "seed")  # what --compare must share


def bucket_sums(losses, bucket: int) -> tuple[list[float], list[int]]:
    """Per-bucket loss sums and target counts: losses[i - 1] belongs to target token i, bucket i // bucket."""
    import torch

    n = losses.shape[0] + 1
    index = torch.arange(1, n) // bucket
    buckets = (n - 1) // bucket + 1
    sums = torch.zeros(buckets, dtype=torch.float64).index_add_(0, index, losses.double())
    return sums.tolist(), torch.bincount(index, minlength=buckets).tolist()


def check_settings(corpus, length, documents, bucket, seed) -> None:
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {', '.join(CORPORA)} (got {corpus!r})")
    for value, name, minimum in ((length, "length", 2), (documents, "documents", 1), (bucket, "bucket", 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum} (got {value!r})")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer (got {seed!r})")


def summarize(done: dict[tuple, dict], config: dict, run: dict, model: dict, env: dict) -> dict:
    from cometlm.runtime import peak_rss_mib

    records = [done[(i,)] for i in range(config["documents"]) if (i,) in done]
    n_buckets = (config["length"] - 1) // config["bucket"] + 1
    sums, counts = [0.0] * n_buckets, [0] * n_buckets
    for r in records:
        for b, (s, c) in enumerate(zip(r["loss_sum"], r["count"], strict=True)):
            sums[b] += s
            counts[b] += c
    buckets = []
    for b in range(n_buckets):
        loss = sums[b] / counts[b] if counts[b] else None
        buckets.append({"start": b * config["bucket"], "end": min((b + 1) * config["bucket"], config["length"]),
                        "targets": counts[b], "loss": loss, "ppl": math.exp(loss) if loss is not None else None})
    targets = sum(counts)
    mean = sum(sums) / targets if targets else None
    seconds = sum(r["seconds"] for r in records)
    return {
        "task": "ppl",
        "method": run["method"],
        "complete": len(records) == config["documents"],
        "config": config,
        "model": model,
        "documents_done": len(records),
        "buckets": buckets,
        "mean_loss": mean,
        "ppl": math.exp(mean) if mean is not None else None,
        "cost": {
            "document_seconds": round(seconds, 3),
            "tokens_per_s": round(sum(r["tokens"] for r in records) / seconds, 1) if seconds > 0 else None,
            "peak_rss_mib": peak_rss_over(records, peak_rss_mib()),
            "threads": tally(records, "threads"),
            "note": RSS_NOTE,
        },
        "environment": {**env, "written_utc": utc_now(), "commands": tally(records, "command")},
        "files": {"documents": DOCUMENTS_FILE, "plot": PLOT_FILE},
    }


def load_summary(path) -> dict:
    """A ppl result: its folder or its ppl.json."""
    path = Path(path)
    file = path / SUMMARY_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} holds no perplexity result ({SUMMARY_FILE}); give a folder that "
                                "`cometlm eval ppl` wrote, or its ppl.json")
    summary = json.loads(file.read_text(encoding="utf-8"))
    if summary.get("task") != "ppl":
        raise ValueError(f"{file} is a {summary.get('task')!r} result, not a perplexity result")
    return summary


def write_plot(path: Path, summaries: list[dict]) -> None:
    """Mean loss per position bucket, one line per result (the first is this run)."""
    write_figure(path, lambda: _loss_plot(summaries))


def _loss_plot(summaries: list[dict]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for summary in summaries:
        points = [((b["start"] + b["end"]) / 2, b["loss"]) for b in summary["buckets"] if b["loss"] is not None]
        if not points:
            continue
        mean = summary["mean_loss"]
        done = "" if summary["complete"] else f", {summary['documents_done']}/{summary['config']['documents']} docs"
        label = f"{method_label(summary)}: ppl {math.exp(mean):.2f}{done}"
        ax.plot(*zip(*points), marker="o", markersize=3, label=label)
    config = summaries[0]["config"]
    ax.set_xlabel("position in the document (tokens)")
    ax.set_ylabel("next-token loss (nats)")
    ax.set_title(
        f"Held-out {config['corpus']} ({config['documents']} x {length_label(config['length'])} tokens), loss per "
        f"{config['bucket']}-token bucket\n{summaries[0]['model']['name']}", fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def evaluate_ppl(
    model,
    tokenizer,
    out_dir,
    corpus: str = "bible",
    length: int = 8192,
    documents: int = 4,
    bucket: int = 1024,
    seed: int = 0,
    method: str = "comet",
    window: int | None = None,
    sink_tokens: int = DEFAULT_SINK_TOKENS,
    compare=(),
    progress: bool = True,
    model_name: str | None = None,
    command: str | None = None,
) -> dict:
    """Scores `documents` held-out windows of `length` tokens with one method and returns the summary that
    `ppl.json` holds. comet and no-memory read fixed chunks of C from the start, as `forward` does; `window`
    and `sink_tokens` are as in `methods.build_method`. `compare`: other ppl results (folders or ppl.json) of
    the same documents, drawn in the same plot. Documents already in `documents.jsonl` are skipped.
    """
    import torch
    from tqdm.auto import tqdm

    from cometlm.tasks.corpora import corpus_tokens
    from cometlm.tasks.corpora import CorpusWindows
    from cometlm.tasks.sample import sample_rng

    check_settings(corpus, length, documents, bucket, seed)
    reader = build_method(method, model, "fixed", 0, window, sink_tokens)
    reader.check_document(length)
    data = CorpusWindows(tokenizer, corpus, length, split="heldout", heldout_fraction=HELDOUT_FRACTION)
    info = model_info(model, reader, model_name)
    settings = reader.settings()
    # What makes two documents' results comparable; a documents.jsonl with other values belongs to another run.
    run = {"method": method, **settings, "corpus": corpus, "length": length, "bucket": bucket, "seed": seed,
           "model_id": info["id"]}
    config = {"corpus": corpus, "split": "heldout", "heldout_fraction": HELDOUT_FRACTION,
              "heldout_tokens": list(data.span), "length": length, "documents": documents, "bucket": bucket,
              "seed": seed, "method": method, **settings, "reads": reader.describe()}
    others = [load_summary(p) for p in compare]
    for path, other in zip(compare, others):
        differ = [f"{k}: {other['config'].get(k)!r} there, {config[k]!r} here" for k in SAME_DOCUMENTS
                  if other["config"].get(k) != config[k]]
        if differ:
            raise ValueError(f"cannot compare with {path}: it scored other documents ({', '.join(differ)})")
    env = environment(command if command is not None else shlex.join(sys.argv), reader.device)
    ids = corpus_tokens(corpus, tokenizer)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / DOCUMENTS_FILE
    done = load_records(log, run, ("document",), "perplexity document")

    def write_outputs() -> dict:
        summary = summarize(done, config, run, info, env)
        write_json(out_dir / SUMMARY_FILE, summary)
        write_plot(out_dir / PLOT_FILE, [summary, *others])
        return summary

    def status() -> str:
        records = [done[(i,)] for i in range(documents) if (i,) in done]
        targets = sum(sum(r["count"]) for r in records)
        return f"loss {sum(sum(r['loss_sum']) for r in records) / targets:.3f}" if targets else ""

    summary, unwritten = None, True
    was_training = model.training
    model.eval()
    bar = tqdm(total=documents, initial=sum((i,) in done for i in range(documents)), desc="ppl", unit="doc",
               disable=not progress, dynamic_ncols=True)
    try:
        for i in range(documents):
            if (i,) in done:
                continue
            bar.set_postfix_str(status())
            begin, end = data.window(sample_rng(seed, i))  # document i, as training draws its sample i
            start = time.perf_counter()
            with torch.inference_mode():
                losses = reader.token_losses(ids[begin:end].tolist(), progress)
            seconds = time.perf_counter() - start
            sums, counts = bucket_sums(losses, bucket)
            record = {**run, "document": i, "start": begin, "end": end, "tokens": end - begin, "loss_sum": sums,
                      "count": counts, "mean_loss": sum(sums) / sum(counts),
                      **cost_fields(seconds, end - begin, env["command"])}
            append_record(log, record)
            done[(i,)] = record
            summary, unwritten = write_outputs(), False
            bar.set_postfix_str(status(), refresh=False)
            bar.update()
    finally:
        bar.close()
        model.train(was_training)
        if unwritten:
            summary = write_outputs()
    return summary


def format_buckets(summaries: list[dict]) -> str:
    """Loss per bucket (rows) for each result (columns), with the overall perplexity underneath."""
    width = max(22, *(len(method_label(s)) + 2 for s in summaries))
    lines = ["tokens        " + "".join(f"{method_label(s):>{width}}" for s in summaries)]
    for b, bucket in enumerate(summaries[0]["buckets"]):
        values = [s["buckets"][b]["loss"] if b < len(s["buckets"]) else None for s in summaries]
        cells = "".join(f"{'-' if v is None else f'{v:.4f}':>{width}}" for v in values)
        lines.append(f"{bucket['start']:>6}-{bucket['end']:<7}" + cells)
    ppls = ["-" if s["ppl"] is None else f"{s['ppl']:.3f}" for s in summaries]
    lines.append("ppl           " + "".join(f"{p:>{width}}" for p in ppls))
    return "\n".join(lines)
