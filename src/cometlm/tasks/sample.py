"""What every task generator returns, how its answers are scored, and how train and test are kept apart.

A `TaskSample` generalises `retrieval.RetrievalSample` to several facts and several expected values: the grid
(`evaluation.grid`) and the training datasets (`training.task_data`) read the same fields from both
(`prompt_ids`, `question_ids`, `answer_ids`, `needle_start`).

Scoring is exact and the same for every task (`matches`):
- "all": every expected value occurs in the generated text as a whole word or phrase (case-insensitive, runs of
  white space equal), and no distractor does (a wrong value that the prompt also holds: another key's value, a
  variable of another chain, a room the person left). Whole words: "1234567" is not found in "12345678".
- "number": the first run of digits in the generated text that does not follow a letter equals the expected number
  ("3 returns" and "Pine frying pan B74: 3 stars" pass for 3; "13" and "three" do not).

Train and test differ by seed and, where a generator has them, by `Pool`s: each pool lists the templates or
names that only the training split uses and those only the test split uses; they never overlap (checked when
the pool is made).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

SPLITS = ("train", "test")
MATCHES = ("all", "number")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test' (got {split!r})")
    return split


@dataclass(frozen=True)
class Pool:
    """Templates or names, disjoint between the training and the test split."""

    train: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self):
        if not self.train or not self.test:
            raise ValueError("a pool needs at least one entry per split")
        shared = set(self.train) & set(self.test)
        if shared:
            raise ValueError(f"a pool's train and test entries overlap: {sorted(shared)}")

    def of(self, split: str) -> tuple[str, ...]:
        return self.train if check_split(split) == "train" else self.test


@dataclass(frozen=True)
class TaskSample:
    """One prompt of exactly the requested length, the facts hidden in it and what the answer must hold.

    `answer_ids` encode `" " + answer` (the expected values joined by ", "): the question ends without a trailing
    space, so the answer's first token carries it, as the model would generate it. It is the training target.
    """

    context_ids: list[int]  # the long input with the facts inside, ending before the question
    question_ids: list[int]  # the question, starting with a line break
    answer_ids: list[int]  # the reference answer
    answers: tuple[str, ...]  # every value the answer must contain
    facts: tuple[str, ...]  # the text of each hidden fact, in the order they appear
    fact_starts: tuple[int, ...]  # index in context_ids where each fact begins
    depths: tuple[float, ...]  # requested depth of each fact in [0, 1]: the fraction of the haystack before it
    depth: float  # the grid's depth: that of the fact the answer hinges on (facts[key])
    key: int = 0  # index in facts of that fact
    distractors: tuple[str, ...] = ()  # wrong values the prompt also holds; an answer naming one is wrong
    match: str = "all"  # see the module docstring
    kind: str = ""  # the variant or question type, e.g. "multikey", "last-purchase"
    split: str = "test"

    def __post_init__(self):
        if self.match not in MATCHES:
            raise ValueError(f"match must be one of {MATCHES} (got {self.match!r})")
        if not self.answers:
            raise ValueError("a task sample needs at least one expected answer")
        if not len(self.facts) == len(self.fact_starts) == len(self.depths):
            raise ValueError("facts, fact_starts and depths must have one entry per fact")

    @property
    def answer(self) -> str:
        return ", ".join(self.answers)

    @property
    def prompt_ids(self) -> list[int]:
        return self.context_ids + self.question_ids

    @property
    def needle_start(self) -> int | None:
        """Where the fact the answer hinges on begins (None for tasks without hidden facts, e.g. word counting)."""
        return self.fact_starts[self.key] if self.fact_starts else None


def matches(generated: str, sample: TaskSample) -> bool:
    """Whether the generated text answers the sample (module docstring: "all" or "number")."""
    return answer_matches(generated, sample.answers, sample.distractors, sample.match)


def answer_matches(generated: str, answers: Sequence[str], distractors: Sequence[str] = (), match: str = "all") -> bool:
    if match == "number":
        run = re.search(r"(?<![0-9A-Za-z])\d+", generated)  # not a model number's ("frying pan B74: 4 stars")
        return run is not None and run.group() == answers[0].strip()
    if match != "all":
        raise ValueError(f"match must be one of {MATCHES} (got {match!r})")
    text = _normalise(generated)
    # longest first: a value inside another ("Cobalt kettle" in "Cobalt kettle A42") is looked for after the longer
    # one's mention is gone, so the longer one's mention never counts for it, nor its removal hides the longer one
    for answer in sorted(answers, key=lambda value: len(normalised(value)), reverse=True):
        pattern = _phrase(answer)
        if not pattern.search(text):
            return False
        text = pattern.sub(" ", text)  # a distractor inside an expected value ("shoes" in "blue shoes") is no error
    words = set(re.findall(r"[0-9a-z]+", text))  # one-word distractors by set lookup: a word list has thousands
    return not any(wrong.lower() in words if wrong.isalnum() else _phrase(wrong).search(text) for wrong in distractors)


def normalised(value: str) -> str:
    """A value as `matches` compares it: lower case, runs of white space as one space, none around it. Values with
    the same normalised form are one value to the matcher ("Trail shoes" and "trail  SHOES")."""
    return _normalise(value.strip())


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower())


def _phrase(value: str) -> re.Pattern:
    """The value as a whole word or phrase: not preceded or followed by a letter or digit."""
    return re.compile(r"(?<![0-9a-z])" + re.escape(normalised(value)) + r"(?![0-9a-z])")


def sample_rng(seed: int, index: int, stream: str = "") -> random.Random:
    """The random generator of sample `index`: a function of (stream, seed, index) only, identical in every
    process (string seeds are hashed with SHA-512, unlike `hash()`, which is salted per process)."""
    return random.Random(f"{stream}/{seed}/{index}")
