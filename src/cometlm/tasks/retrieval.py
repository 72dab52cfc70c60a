"""Synthetic long-context retrieval tasks: the passkey test and the needle in a haystack.

Training and evaluation both build their prompts here, so a model is scored on exactly the format it was
trained on. A prompt is assembled from separately tokenized pieces (intro, filler, needle, question) whose ids
are concatenated, so a 1M-token prompt costs list operations instead of a tokenizer pass over 1M tokens. The
pieces meet at line breaks or before a space, where byte-level BPE pre-tokenizers split anyway, so for SmolLM2
the passkey ids equal those of tokenizing the prompt text in one go (tested).

Both builders return prompts of exactly `n_tokens` ids (context + question): the haystack is cut to fit,
mid-sentence if need be. `depth` is the fraction of the haystack that precedes the needle, rounded to the
nearest sentence boundary; `needle_start / len(context_ids)` therefore equals `depth` up to one sentence plus
the fixed pieces (intro, needle), which matter less the longer the context.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import random
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cometlm.bundled import encode
from cometlm.tasks.corpora import corpus_tokens

PASSKEY_INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
PASSKEY_FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
PASSKEY_QUESTION = "What is the pass key? The pass key is"

NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
NEEDLE_QUESTION = "What is the best thing to do in San Francisco? Answer:"
NEEDLE_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day."
NEEDLE_CORPUS = "essays"

@dataclass(frozen=True)
class RetrievalSample:
    """One retrieval prompt and its expected continuation.

    `answer_ids` encode `" " + answer`: the question ends without a trailing space, so the answer's first token
    carries it, as the model would generate it.
    """

    context_ids: list[int]  # the long input with the needle inside, ending before the question
    question_ids: list[int]  # the question, starting with a line break
    answer_ids: list[int]  # what the model must generate next
    answer: str  # the answer text, e.g. "48213"
    depth: float  # requested needle depth in [0, 1]: 0 = start of the haystack, 1 = its end
    needle_start: int  # index in context_ids where the needle begins

    @property
    def prompt_ids(self) -> list[int]:
        return self.context_ids + self.question_ids


# --------------------------------------------------------------------------------------------------------------
# Passkey


def passkey_sample(
    tokenizer, n_tokens: int, depth: float, rng: random.Random, key_digits: int = 5
) -> RetrievalSample:
    """The passkey test (Mohtashami & Jaggi 2023, as used by LongLoRA and CoMeT) with `len(prompt_ids) ==
    n_tokens` exactly.

    Lines: intro, filler, needle ("The pass key is 48213. Remember it. 48213 is the pass key."), filler,
    question ("What is the pass key? The pass key is"). A filler line repeats the five filler sentences; the
    filler on one side of the needle is left out when `depth` puts the needle at that end.
    """
    check_depth(depth)
    if key_digits < 1:
        raise ValueError(f"key_digits must be at least 1 (got {key_digits})")
    pieces = _passkey_pieces(tokenizer)
    key = str(rng.randrange(10 ** (key_digits - 1), 10**key_digits))
    needle = encode(tokenizer, f"The pass key is {key}. Remember it. {key} is the pass key.")
    head = pieces.intro + pieces.newline
    newline = len(pieces.newline)
    # Filler tokens when there is filler on both sides of the needle (so two line breaks around it).
    filler = n_tokens - len(head) - len(needle) - len(pieces.question) - 2 * newline
    if filler < 0:
        raise ValueError(f"n_tokens={n_tokens} is too short for a passkey prompt; use at least {n_tokens - filler}")
    before = pieces.nearest_sentence_start(depth * filler, filler)
    after = filler - before
    # A side without filler needs no line break: its tokens go to the filler on the other side.
    if before == 0:
        after += newline
    elif after == 0:
        before += newline
    context = head + (pieces.line(before) + pieces.newline if before else [])
    needle_start = len(context)
    context += needle + (pieces.newline + pieces.line(after) if after else [])
    return RetrievalSample(
        context_ids=context,
        question_ids=pieces.question,
        answer_ids=encode(tokenizer, " " + key),
        answer=key,
        depth=depth,
        needle_start=needle_start,
    )


def passkey_matches(generated_text: str, answer: str) -> bool:
    """Whether the first run of digits in the generated text is exactly the key: " 48213." matches "48213",
    "482139" and "4821" do not."""
    run = re.search(r"\d+", generated_text)
    return run is not None and run.group() == answer.strip()


@dataclass(frozen=True)
class _PasskeyPieces:
    """Token ids of the fixed parts of a passkey prompt, computed once per tokenizer.

    A filler line is `line_head` then `period` repeated: both are the five filler sentences, but the line's
    first sentence has no leading space.
    """

    intro: list[int]
    newline: list[int]
    question: list[int]  # line break + question
    line_head: list[int]
    period: list[int]
    head_starts: list[int]  # sentence starts in line_head, then its length
    period_starts: list[int]  # sentence starts in period, then its length

    def line(self, n: int) -> list[int]:
        """The first n ids of a filler line."""
        repeats = max(0, -(-(n - len(self.line_head)) // len(self.period)))
        return (self.line_head + self.period * repeats)[:n]

    def nearest_sentence_start(self, target: float, n: int) -> int:
        """The sentence start, or the end n, of a filler line of n ids that is nearest to `target` (<= n)."""
        if target <= len(self.line_head):
            candidates = self.head_starts
        else:
            periods = (int(target) - len(self.line_head)) // len(self.period)
            candidates = [len(self.line_head) + periods * len(self.period) + s for s in self.period_starts]
        return min([c for c in candidates if c <= n] + [n], key=lambda c: abs(c - target))


@functools.lru_cache(maxsize=4)
def _passkey_pieces(tokenizer) -> _PasskeyPieces:
    first, *rest = PASSKEY_FILLER
    head_sentences = [encode(tokenizer, first)] + [encode(tokenizer, " " + s) for s in rest]
    period_sentences = [encode(tokenizer, " " + s) for s in PASSKEY_FILLER]
    return _PasskeyPieces(
        intro=encode(tokenizer, PASSKEY_INTRO),
        newline=encode(tokenizer, "\n"),
        question=encode(tokenizer, "\n" + PASSKEY_QUESTION),
        line_head=list(itertools.chain.from_iterable(head_sentences)),
        period=list(itertools.chain.from_iterable(period_sentences)),
        head_starts=[0, *itertools.accumulate(len(s) for s in head_sentences)],
        period_starts=[0, *itertools.accumulate(len(s) for s in period_sentences)],
    )


# --------------------------------------------------------------------------------------------------------------
# Needle in a haystack


def needle_sample(tokenizer, n_tokens: int, depth: float, rng: random.Random, text=None) -> RetrievalSample:
    """The needle in a haystack (Kamradt 2023) over the bundled Paul Graham essays, with `len(prompt_ids) ==
    n_tokens` exactly.

    The haystack starts at a random sentence of the essays (chosen by `rng`) and wraps around to the first essay
    when it runs out; the needle goes in at the sentence boundary nearest `depth`. ``text``: a split of the essays
    to read instead of all of them (`tasks.haystack.Haystack`, whose ``window`` draws the start), as training does
    so that it never reads the part evaluation holds out.
    """
    check_depth(depth)
    pieces = _haystack_pieces(tokenizer)
    size = n_tokens - len(pieces.needle) - len(pieces.question)
    if size < 0:
        raise ValueError(f"n_tokens={n_tokens} is too short for a needle prompt; use at least {n_tokens - size}")
    if text is not None:
        haystack, cuts = text.window(size, rng)
    else:
        start = int(pieces.corpus_starts[rng.randrange(len(pieces.corpus_starts))])
        haystack = corpus_tokens(NEEDLE_CORPUS, tokenizer, start + size)[start:].tolist()
        cuts = [0, *sentence_starts(tokenizer, haystack, line_breaks=False), size]
    cut = nearest(cuts, depth * size)
    return RetrievalSample(
        context_ids=haystack[:cut] + pieces.needle + haystack[cut:],
        question_ids=pieces.question,
        answer_ids=pieces.answer,
        answer=NEEDLE_ANSWER,
        depth=depth,
        needle_start=cut,
    )


def needle_answer_matches(generated_text: str) -> bool:
    """Key-phrase match for the needle: both "sandwich" and "Dolores Park" appear, in any case."""
    text = generated_text.lower()
    return "sandwich" in text and "dolores park" in text


@dataclass(frozen=True)
class _HaystackPieces:
    """Token ids of the fixed parts of a needle prompt and where a haystack may start, once per tokenizer."""

    needle: list[int]  # " " + needle: it follows a sentence end or a line break
    question: list[int]  # line break + question
    answer: list[int]
    corpus_starts: list[int]  # sentence starts in the essays (their lines are hard-wrapped mid-sentence)


@functools.lru_cache(maxsize=4)
def _haystack_pieces(tokenizer) -> _HaystackPieces:
    corpus = corpus_tokens(NEEDLE_CORPUS, tokenizer)
    return _HaystackPieces(
        needle=encode(tokenizer, " " + NEEDLE),
        question=encode(tokenizer, "\n" + NEEDLE_QUESTION),
        answer=encode(tokenizer, " " + NEEDLE_ANSWER),
        corpus_starts=[0, *sentence_starts(tokenizer, corpus.numpy(), line_breaks=False)],
    )


def nearest(sorted_values: Sequence[int], target: float) -> int:
    """The value of a sorted list nearest to `target` (the lower one on a tie)."""
    i = bisect.bisect_left(sorted_values, target)
    return min(sorted_values[max(0, i - 1) : i + 1], key=lambda v: abs(v - target))


# --------------------------------------------------------------------------------------------------------------
# Shared


def sentence_starts(tokenizer, ids: Sequence[int], line_breaks: bool = True) -> list[int]:
    """Indices of the tokens that begin a sentence (never 0): where a needle or a chunk boundary can go without
    splitting a sentence.

    A token ends a sentence when its text ends in ".", "?" or "!" (trailing spaces aside), and, with
    `line_breaks`, also when it ends in a line break. Text with hard-wrapped lines (the essays) needs
    `line_breaks=False`. False positives such as "e.g." only cost a slightly worse cut.
    """
    ends_sentence, ends_line = _sentence_end_tables(tokenizer)
    ends = ends_sentence | ends_line if line_breaks else ends_sentence
    ids = np.asarray(ids, dtype=np.int64)
    return (np.flatnonzero(ends[ids[:-1]]) + 1).tolist()


@functools.lru_cache(maxsize=4)
def _sentence_end_tables(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Two (V,) bool arrays: which token ids end in sentence punctuation, which in a line break. Decoding the
    vocabulary once takes about a second."""
    pieces = [piece.rstrip(" \t") for piece in tokenizer.batch_decode([[i] for i in range(len(tokenizer))])]
    ends_sentence = np.array([piece.endswith((".", "?", "!")) for piece in pieces])
    ends_line = np.array([piece.endswith("\n") for piece in pieces])
    return ends_sentence, ends_line


def check_depth(depth: float) -> None:
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1] (0 = start of the haystack, 1 = its end), got {depth}")
