"""Long logs (a user's shop events, an agent's tool calls) with facts inserted at depths, and reading a user's JSONL.

A log is a stream of records, each rendered as one or more lines ending in a line break. A prompt's log is a
window of exactly the tokens that intro, facts and question leave: whole records, the first one cut from its start
when the window's length demands it (a log that begins mid-record, as a window into a longer history does). Fact
i goes in between two records, at the record start nearest `depths[i]` of the window and never before fact i-1.
A fact's record may depend on its neighbours and on the fact before it (a shop event takes the time of the event
before it, and a time later than the fact before it), so it is made by a function of those; where it cannot go
between two records (no minute left between them), it goes in at the next record start where it can. Its rendering is
redone until the lengths settle.

A user's JSONL holds one record per line; `read_records` checks every line and reports every bad one with its
file and line number before anything is built. The training split reads the first 95% of the records, the test
split the last 5% (at least one). A window starts at a random record and wraps around to the start of the split
when it runs out (`cycle_from`), each wrap a copy that may be changed (a user's shop events moved later in time).
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from cometlm.bundled import encode
from cometlm.tasks.haystack import HELDOUT_FRACTION, file_fingerprint
from cometlm.tasks.retrieval import nearest
from cometlm.tasks.sample import check_split

_BATCH = 256  # records rendered and tokenized at a time
_SETTLE = 4  # renderings of the facts before their lengths must have settled
_ERRORS_SHOWN = 20


class RecordError(ValueError):
    """Bad records in a user's JSONL; `errors` lists every one as "path:line: reason"."""

    def __init__(self, path, errors: list[str], records: int):
        self.errors = errors
        shown = "\n  ".join(errors[:_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - _ERRORS_SHOWN} more" if len(errors) > _ERRORS_SHOWN else ""
        super().__init__(f"{path}: {len(errors)} of {records} records are bad; fix or remove them:\n  {shown}{more}")


def jsonl_records(path) -> Iterator[tuple[str, dict | None, str | None]]:
    """(where, record, problem) for every non-blank line of a JSONL file; `where` is "path:line" and `problem`
    says why the line is not a JSON object (None when it is)."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield where, None, "not UTF-8"
                continue
            except json.JSONDecodeError as e:
                yield where, None, f"not JSON ({e.msg} at column {e.colno})"
                continue
            if not isinstance(record, dict):
                yield where, None, f"not a JSON object (got {type(record).__name__})"
                continue
            yield where, record, None


def read_records(path, parse: Callable[[dict], object]) -> tuple:
    """Every record of a JSONL file, each made by `parse` (which raises ValueError saying what is wrong with a
    record); a file with any bad line raises `RecordError` naming them all. Read once per version of the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return _read_records(path, file_fingerprint(path), parse)


@functools.lru_cache(maxsize=8)
def _read_records(path, fingerprint, parse) -> tuple:
    records, errors, count = [], [], 0
    for where, raw, problem in jsonl_records(path):
        count += 1
        if problem is None:
            try:
                records.append(parse(raw))
                continue
            except ValueError as err:
                problem = str(err)
        errors.append(f"{where}: {problem}")
    if errors:
        raise RecordError(path, errors, count)
    if not records:
        raise ValueError(f"{path} holds no records")
    return tuple(records)


def split_region(records: Sequence, split: str) -> Sequence:
    """The records a split reads: the first 95% for training, the last 5% (at least one) for the test."""
    cut = min(len(records) - 1, int(len(records) * (1.0 - HELDOUT_FRACTION)))
    return records[:cut] if check_split(split) == "train" and cut > 0 else records[cut:]


def cycle_from(records: Sequence, rng, lap: Callable[[object, int], object] | None = None) -> Iterator:
    """The records from a random one on, wrapping around forever; on the n-th wrap (n >= 1) each record is
    `lap(record, n)` (by default the record itself: a shop event would go back in time there, a tool call not)."""
    yield from records[rng.randrange(len(records)):]
    for n in itertools.count(1):
        yield from (records if lap is None else (lap(record, n) for record in records))


@dataclass(frozen=True)
class LogPrompt:
    context_ids: list[int]
    question_ids: list[int]
    facts: list  # the fact records, in order
    fact_texts: list[str]
    fact_starts: list[int]  # where each fact's rendering begins in context_ids
    shown: list  # the window's records shown whole, with the facts, in order


def log_prompt(tokenizer, n_tokens: int, stream: Iterator, render: Callable[[object], str], *, intro: str,
               facts: Sequence[Callable], depths: Sequence[float], question: Callable[[list], str],
               what: str) -> LogPrompt:
    """A log of exactly `n_tokens` ids with intro, facts and question (module docstring). `facts[i](before, after,
    previous)` makes fact i's record from the records around it (either may be None) and fact i-1's record (None
    for the first), or returns None where it cannot go between `before` and `after` (never when `after` is None:
    at the end of the log); `render` gives a record's text, which ends in a line break; `depths` are
    non-decreasing; `question(fact records)` is the question's text (it may name what a fact took from its
    neighbours, such as a date)."""
    if list(depths) != sorted(depths):
        raise ValueError(f"facts go in the order of their depths (got depths {list(depths)})")
    intro_ids = encode(tokenizer, intro + "\n") if intro else []
    records, lines = [], []  # the stream so far and each record's ids

    def read(needed: int) -> None:
        while sum(map(len, lines)) < needed:
            batch = [next(stream) for _ in range(_BATCH)]
            records.extend(batch)
            lines.extend(tokenizer([render(r) for r in batch], add_special_tokens=False)["input_ids"])

    made = []
    for make in facts:
        made.append(make(None, None, made[-1] if made else None))
    for _ in range(_SETTLE):
        texts = [render(r) for r in made] + ["\n" + question(made)]
        *fact_ids, question_ids = [encode(tokenizer, t) for t in texts]
        size = n_tokens - len(intro_ids) - sum(map(len, fact_ids)) - len(question_ids)
        if size < 0:
            raise ValueError(f"n_tokens={n_tokens} is too short for {what}; use at least {n_tokens - size}")
        read(size)
        count, total = 0, 0
        while total < size:
            total += len(lines[count])
            count += 1
        cut = total - size  # tokens cut from the front of the window
        starts, offset = [], -cut  # where each record's line begins in the window
        for line in lines[:count]:
            starts.append(offset)
            offset += len(line)
        boundaries = [s for s in starts if s >= 0] + [size]
        positions, again, at = [], [], 0
        for make, depth in zip(facts, depths):
            at = max(at, nearest(boundaries, depth * size))
            while True:
                i = starts.index(at) if at < size else count  # the record that starts at the fact
                record = make(records[i - 1] if i > 0 else None, records[i] if i < count else None,
                              again[-1] if again else None)
                if record is not None:
                    break
                if at == size:
                    raise RuntimeError(f"a fact of {what} cannot go at the end of the log")
                at = boundaries[boundaries.index(at) + 1]
            positions.append(at)
            again.append(record)
        settled = [render(r) for r in again] + ["\n" + question(again)] == texts
        made = again
        if settled:
            break
    else:
        raise RuntimeError(f"the facts of {what} did not settle in {_SETTLE} renderings")
    window = [t for line in lines[:count] for t in line][cut:]
    context, fact_starts, shown, previous = list(intro_ids), [], [], 0
    order = iter(zip(positions, fact_ids, made))
    pending = next(order, None)
    for i in range(count + 1):
        line_start = starts[i] if i < count else size
        while pending is not None and pending[0] == line_start:
            context += window[previous : pending[0]]
            previous = pending[0]
            fact_starts.append(len(context))
            context += pending[1]
            shown.append(pending[2])
            pending = next(order, None)
        if i < count and starts[i] >= 0:
            shown.append(records[i])
    context += window[previous:]
    return LogPrompt(context, question_ids, made, texts[:-1], fact_starts, shown)
