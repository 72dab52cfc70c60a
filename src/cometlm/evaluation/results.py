"""How every evaluation keeps its results: a resumable JSONL log, atomic files, and the run's provenance.

A long evaluation appends one JSON line per finished unit of work (a trial, a document) and flushes it, so a
killed run loses at most the unit in flight and a rerun skips what is done. Each line carries the settings that
make units comparable (method, seed, model id, ...); a log written with other settings is refused rather than
mixed in. Summaries and figures are rewritten whole, through a temporary file and a rename.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path

from cometlm.files import write_text
from cometlm.runtime import peak_rss_mib

RSS_NOTE = (
    "peak_rss_mib is ru_maxrss of the whole process: it includes model loading and every earlier cell and never "
    "decreases, so only its growth from one cell to the next is attributable to a cell; the summary's figure is the "
    "largest over every process that wrote these results"
)


def cost_fields(seconds: float, tokens: int, command: str) -> dict:
    """A record's cost: wall seconds, tokens read per second and the process's peak RSS so far, with what the time
    depends on besides the work: torch's thread count and the 1-minute load average when the unit finished (other
    processes on the same cores slow it down; the average counts this process too, about `threads` when it runs
    alone); and the command that did the work, since a resumed run's units can come from several commands."""
    import torch

    return {"seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1), "threads": torch.get_num_threads(),
            "load1": round(os.getloadavg()[0], 2), "command": command}


def tally(records, field: str) -> dict[str, int]:
    """How many records have each value of `field` (threads, command); "unknown" counts records from before the
    field was logged."""
    counts: dict[str, int] = {}
    for r in records:
        key = str(r.get(field, "unknown"))
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def peak_rss_over(records, now: float) -> float:
    """The summary's peak RSS in MiB: the largest over the processes that wrote `records` and this one (`now`),
    so that a rerun which only skips finished work still reports the peak of the runs that did it."""
    return round(max([now, *(r["peak_rss_mib"] for r in records)]), 1)


def load_records(path: Path, run: dict, key_fields: tuple[str, ...], what: str,
                 implied: dict | None = None, meaning: dict | None = None) -> dict[tuple, dict]:
    """Finished records by their key fields; refuses a file written by a run with other `run` settings.
    ``implied`` gives the value of a `run` field that records written before the field existed stand for;
    ``meaning`` says, for a field, what a difference in it means (added to the refusal).

    A line cut short by a killed process (no final newline) is dropped, so appending can go on after it.
    """
    if not path.is_file():
        return {}
    implied = implied or {}
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        write_text(path, text)
    done = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = tuple(record[f] for f in key_fields)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path} line {number} is not a {what} record ({err}); move the file away") from None
        other = {f: (record.get(f, implied.get(f)), run[f]) for f in run if record.get(f, implied.get(f)) != run[f]}
        if other:
            diff = ", ".join(f"{f}: {was!r} there, {now!r} now" for f, (was, now) in other.items())
            notes = "".join(f"; {(meaning or {})[f]}" for f in other if f in (meaning or {}))
            raise ValueError(
                f"{path} holds {what}s of a different run ({diff}){notes}; use another output folder or delete that one"
            )
        done.setdefault(key, record)
    return done


def append_record(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def environment(command: str, device) -> dict:
    """The exact command, library versions and machine, recorded with every result."""
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
        "started_utc": utc_now(),
    }
