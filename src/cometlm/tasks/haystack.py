"""Haystacks to hide facts in, and the one way facts are hidden: at the sentence start nearest their depth.

Haystacks (`load_haystack`):
- "bible", "essays": the bundled KJV Bible and Paul Graham essays (`corpora`). The training split reads their
  first 95% of tokens, the test split their last 5% (from its first sentence start on): the same text that
  `cometlm eval ppl` holds out and `cometlm train --data lm:...` never reads.
- "noise": the passkey filler ("The grass is green. The sky is blue. ..."), repeated; the same in both splits.
- "file:PATH": a UTF-8 text file of the user's, split like the corpora (first 95% / last 5% of its tokens).

Sentences are found on token ids (`retrieval.sentence_starts`: a token ending in ".", "?" or "!"), never with nltk,
whose data cannot be downloaded. A window starts at a random sentence of the split's text and wraps around to its
beginning (after a blank line) when the text is shorter than the window.

A prompt is intro + haystack with the facts + question, assembled from separately tokenized pieces, exactly
`n_tokens` ids long: the haystack gets whatever the other pieces leave. Fact i goes in at the sentence start nearest
`depths[i]` of the haystack (never before fact i-1), so it sits within a sentence of its depth.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cometlm.bundled import encode
from cometlm.tasks.corpora import corpus_tokens
from cometlm.tasks.retrieval import PASSKEY_FILLER, nearest, sentence_starts
from cometlm.tasks.sample import TaskSample, check_split

HELDOUT_FRACTION = 0.05  # the test split's share of a corpus or file: its end, as `cometlm eval ppl` holds out
HAYSTACKS = ("bible", "essays", "noise", "file:PATH")
_SEPARATOR = "\n\n"  # between copies when a window wraps around
_SPARSE = 1000  # a text with fewer sentence ends than one per this many tokens is also cut at line breaks


@dataclass(frozen=True, eq=False)
class Haystack:
    """The text of one split, as token ids, and where its sentences start."""

    name: str
    ids: np.ndarray  # (N,) token ids
    starts: np.ndarray  # sorted sentence starts in ids, 0 first
    separator: tuple[int, ...] = ()  # put between copies when a window wraps around

    def window(self, n: int, rng) -> tuple[list[int], list[int]]:
        """`n` ids from a random sentence start (drawn with `rng`), wrapping around, and the sentence starts in
        them, 0 and n included."""
        first = int(self.starts[rng.randrange(len(self.starts))])
        pieces, starts, filled = [], [], 0
        ids, offsets = self.ids[first:], self.starts[np.searchsorted(self.starts, first):] - first
        while True:
            pieces.append(ids)
            starts.append(offsets + filled)
            filled += len(ids)
            if filled >= n:
                break
            pieces.append(np.asarray(self.separator, dtype=self.ids.dtype))
            filled += len(self.separator)
            ids, offsets = self.ids, self.starts
        window = np.concatenate(pieces)[:n].tolist()
        cut = np.concatenate(starts)
        return window, sorted({0, n, *cut[cut < n].tolist()})


def load_haystack(name: str, tokenizer, split: str) -> Haystack:
    """The haystack a name (`HAYSTACKS`) gives for one split."""
    check_split(split)
    if name in ("bible", "essays"):
        return _corpus_haystack(name, tokenizer, split)
    if name == "noise":
        return _noise_haystack(tokenizer)
    if name.startswith("file:") and len(name) > 5:
        if not Path(name[5:]).is_file():
            raise FileNotFoundError(f"haystack {name!r}: no such file")
        return _file_haystack(file_fingerprint(name[5:]), tokenizer, split)
    raise ValueError(f"unknown haystack {name!r}; choose one of {', '.join(HAYSTACKS)}")


@functools.lru_cache(maxsize=8)
def _corpus_haystack(name: str, tokenizer, split: str) -> Haystack:
    return _split_haystack(name, corpus_tokens(name, tokenizer).numpy(), tokenizer, split)


@functools.lru_cache(maxsize=4)
def _file_haystack(fingerprint: tuple, tokenizer, split: str) -> Haystack:
    path = fingerprint[0]
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"haystack file {path} is not UTF-8 (byte {err.start})") from None
    if not text.strip():
        raise ValueError(f"haystack file {path} is empty")
    return _split_haystack(f"file:{path}", np.asarray(encode(tokenizer, text), dtype=np.int64), tokenizer, split)


def _split_haystack(name: str, ids: np.ndarray, tokenizer, split: str) -> Haystack:
    starts = np.asarray([0, *sentence_starts(tokenizer, ids, line_breaks=False)], dtype=np.int64)
    if len(starts) * _SPARSE < len(ids):  # hardly any sentence punctuation: lines are the sentences
        starts = np.asarray([0, *sentence_starts(tokenizer, ids, line_breaks=True)], dtype=np.int64)
    cut = int(len(ids) * (1.0 - HELDOUT_FRACTION))
    if split == "train":
        region, kept = (0, cut), starts[starts < cut]
    else:
        first = int(starts[np.searchsorted(starts, cut)]) if starts[-1] >= cut else cut
        region, kept = (first, len(ids)), starts[starts >= first]
    if region[1] - region[0] < 1:
        raise ValueError(f"haystack {name!r} is too short to split into train and test text")
    return Haystack(name, ids[region[0] : region[1]], kept - region[0] if len(kept) else np.zeros(1, np.int64),
                    tuple(encode(tokenizer, _SEPARATOR)))


@functools.lru_cache(maxsize=4)
def _noise_haystack(tokenizer) -> Haystack:
    sentences = [encode(tokenizer, " " + s) for s in PASSKEY_FILLER]
    starts = np.cumsum([0, *map(len, sentences[:-1])])
    return Haystack("noise", np.asarray([i for s in sentences for i in s], dtype=np.int64), starts)


# --------------------------------------------------------------------------------------------------------------
# Hiding facts


def insert_facts(window: Sequence[int], starts: Sequence[int], facts: Sequence[Sequence[int]],
                 depths: Sequence[float]) -> tuple[list[int], list[int]]:
    """The window with each fact inserted, in order, at the start in `starts` nearest `depth * len(window)` and
    never before the previous fact; and where each fact begins in the result."""
    if list(depths) != sorted(depths):
        raise ValueError(f"facts go in the order of their depths (got depths {list(depths)})")
    out, fact_starts, at = [], [], 0
    for fact, depth in zip(facts, depths, strict=True):
        cut = max(at, nearest(starts, depth * len(window)))
        out += window[at:cut]
        fact_starts.append(len(out))
        out += fact
        at = cut
    return out + list(window[at:]), fact_starts


def ordered(facts: Sequence[str], depths: Sequence[float]) -> tuple[list[str], list[float], list[int]]:
    """Facts sorted by depth, ties in their given order; and where each given fact went."""
    order = sorted(range(len(facts)), key=lambda i: depths[i])
    return [facts[i] for i in order], [depths[i] for i in order], [order.index(i) for i in range(len(facts))]


def hidden_facts_sample(tokenizer, n_tokens: int, haystack, rng, *, intro: str, facts: Sequence[str],
                        depths: Sequence[float], question: str, answers: Sequence[str], depth: float, key: int,
                        what: str, split: str, **fields) -> TaskSample:
    """A prompt of exactly `n_tokens` ids: `intro` and a line break, a window of `haystack` (a `Haystack`, or
    anything with its `window(n, rng)`) with the facts (each " " + fact) at their depths (non-decreasing), a line
    break and `question`. `key` is the index of the fact the answer hinges on; `fields` are `TaskSample`'s
    others (distractors, match, kind)."""
    intro_ids = encode(tokenizer, intro + "\n") if intro else []
    fact_ids = [encode(tokenizer, " " + fact) for fact in facts]
    question_ids = encode(tokenizer, "\n" + question)
    size = n_tokens - len(intro_ids) - sum(map(len, fact_ids)) - len(question_ids)
    if size < 0:
        raise ValueError(f"n_tokens={n_tokens} is too short for {what}; use at least {n_tokens - size}")
    window, starts = haystack.window(size, rng)
    context, fact_starts = insert_facts(window, starts, fact_ids, depths)
    return TaskSample(
        context_ids=intro_ids + context, question_ids=question_ids,
        answer_ids=encode(tokenizer, " " + ", ".join(answers)), answers=tuple(answers), facts=tuple(facts),
        fact_starts=tuple(len(intro_ids) + s for s in fact_starts), depths=tuple(depths), depth=depth, key=key,
        split=split, **fields,
    )


def spread(rng, depth: float, before: int, after: int) -> list[float]:
    """Depths for `before` facts that precede the decisive one, it, and `after` facts that follow: sorted uniform
    draws in [0, depth] and [depth, 1] around `depth`."""
    return (sorted(rng.uniform(0.0, depth) for _ in range(before)) + [depth]
            + sorted(rng.uniform(depth, 1.0) for _ in range(after)))


def file_fingerprint(path) -> tuple[str, int, int]:
    """A file's resolved path, modification time and size: a cache key that changes when the file does."""
    stat = os.stat(path)
    return str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size
