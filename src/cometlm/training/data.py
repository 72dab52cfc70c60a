"""Training samples from the bundled corpora and the generated tasks, mixtures of datasets, and batching (the file
datasets are in `file_data.py`).

Every dataset is a deterministic random-access sequence: `ds[i]` depends only on the dataset's inputs, its seed
and `i`, so a run resumed at sample i continues with exactly the samples it would have seen. File datasets keep
file order (draw from them through `MixtureDataset` for a seeded random order) and read and tokenize their files
once, up front: bad records are found before training starts, and each one is either raised (`on_error="fail"`)
or listed in `errors` and `report()` (`on_error="skip"`); nothing is dropped silently.

Token ids come from `cometlm.bundled.encode`, without BOS/EOS, as CoMeT reads raw text; labels are aligned with
`input_ids` (the model shifts them) and -100 where there is no loss.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from cometlm.bundled import encode
from cometlm.tasks.corpora import CorpusWindows
from cometlm.tasks.haystack import load_haystack
from cometlm.tasks.sample import sample_rng
from cometlm.tasks.retrieval import NEEDLE_CORPUS, RetrievalSample, needle_sample, passkey_sample, sentence_starts

IGNORE = -100


@dataclass(frozen=True)
class Sample:
    """One training sequence."""

    input_ids: list[int]
    labels: list[int]  # same length; IGNORE (-100) where there is no loss
    boundaries: tuple[int, ...] = ()  # sorted token offsets in (0, len) where a sentence or turn begins

    def __post_init__(self):
        if len(self.labels) != len(self.input_ids):
            raise ValueError(f"labels must match input_ids in length (got {len(self.labels)} and {len(self.input_ids)})")


class DataError(ValueError):
    """A bad training record; the message starts with "path:line:" (or "path:" for a whole file)."""


def collate(samples: Sequence[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad samples into (B, T) LongTensors `input_ids`, `attention_mask` and `labels` (IGNORE on padding)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    width = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        input_ids[row, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(s.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def check_index(index: int, size: int) -> int:
    """Python sequence indexing: negative indices count from the end; IndexError ends iteration."""
    if not -size <= index < size:
        raise IndexError(f"sample index {index} out of range for a dataset of {size}")
    return index % size


# --------------------------------------------------------------------------------------------------------------
# Files


class _GeneratedDataset:
    """`size` samples, sample i drawn with `sample_rng(seed, i)`."""

    def __init__(self, seed: int, size: int):
        if size < 1:
            raise ValueError(f"size must be at least 1 (got {size})")
        self.seed = seed
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        index = check_index(index, self.size)
        return self._make(sample_rng(self.seed, index))

    def _make(self, rng: random.Random) -> Sample:
        raise NotImplementedError


class RetrievalDataset(_GeneratedDataset):
    """Retrieval prompts of random length in `lengths` (prompt tokens, answer excluded) with the needle at a
    random depth in `depth_range`. `input_ids` = prompt + answer; the loss is on the answer tokens, and with
    `context_loss` on every token."""

    def __init__(
        self,
        tokenizer,
        lengths: tuple[int, int],
        seed: int = 0,
        size: int = 1_000_000,
        depth_range: tuple[float, float] = (0.0, 1.0),
        context_loss: bool = False,
        answer_end: str = "",
    ):
        super().__init__(seed, size)
        low, high = lengths
        if not 1 <= low <= high:
            raise ValueError(f"lengths must be (min, max) with 1 <= min <= max (got {lengths})")
        first, last = depth_range
        if not 0.0 <= first <= last <= 1.0:
            raise ValueError(f"depth_range must be (low, high) with 0 <= low <= high <= 1 (got {depth_range})")
        self.tokenizer = tokenizer
        self.lengths = (low, high)
        self.depth_range = (first, last)
        self.context_loss = context_loss
        # Text the target continues with after the answer (e.g. "." after a passkey), so that the model learns
        # where the answer ends instead of running on; empty: the answer alone.
        self.answer_end = encode(tokenizer, answer_end) if answer_end else []

    def _make(self, rng: random.Random) -> Sample:
        n_tokens = rng.randint(*self.lengths)
        depth = rng.uniform(*self.depth_range)
        return self._sample(self._build(n_tokens, depth, rng))

    def _build(self, n_tokens: int, depth: float, rng: random.Random) -> RetrievalSample:
        raise NotImplementedError

    def _sample(self, task: RetrievalSample) -> Sample:
        prompt, answer = task.prompt_ids, task.answer_ids + self.answer_end
        input_ids = prompt + answer
        labels = input_ids if self.context_loss else [IGNORE] * len(prompt) + answer
        return Sample(input_ids, labels, tuple(sentence_starts(self.tokenizer, input_ids)))


class PasskeyDataset(RetrievalDataset):
    """Passkey prompts (`tasks.passkey_sample`); see `RetrievalDataset` for the arguments. The target is the key
    and the period after it (`answer_end`), so a trained model stops after the key's digits. `key_digits`: the
    key's length, or (low, high) to draw it per sample (harder keys when 5 digits are already learnt)."""

    def __init__(
        self,
        tokenizer,
        lengths: tuple[int, int],
        seed: int = 0,
        size: int = 1_000_000,
        depth_range: tuple[float, float] = (0.0, 1.0),
        context_loss: bool = False,
        key_digits: int = 5,
        answer_end: str = ".",
    ):
        super().__init__(tokenizer, lengths, seed, size, depth_range, context_loss, answer_end)
        low, high = (key_digits, key_digits) if isinstance(key_digits, int) else key_digits
        if not 1 <= low <= high:
            raise ValueError(f"key_digits must be a count >= 1 or (low, high) with 1 <= low <= high (got {key_digits})")
        self.key_digits = (low, high)

    def _build(self, n_tokens: int, depth: float, rng: random.Random) -> RetrievalSample:
        low, high = self.key_digits
        digits = rng.randint(low, high) if high > low else low  # a fixed length draws nothing: the same samples
        return passkey_sample(self.tokenizer, n_tokens, depth, rng, digits)


class NeedleDataset(RetrievalDataset):
    """Needle-in-a-haystack prompts over the training part of the essays (`tasks.needle_sample`; the last 5%, which
    the evaluations' essays haystack and `eval ppl` read, never); see `RetrievalDataset`."""

    def _build(self, n_tokens: int, depth: float, rng: random.Random) -> RetrievalSample:
        text = load_haystack(NEEDLE_CORPUS, self.tokenizer, "train")
        return needle_sample(self.tokenizer, n_tokens, depth, rng, text=text)


class CorpusLMDataset(_GeneratedDataset):
    """Random windows of `length` tokens from one split of a bundled corpus (`tasks.corpora.CorpusWindows`: the
    "heldout" split is the corpus's last `heldout_fraction` of tokens), loss on every token."""

    def __init__(
        self,
        tokenizer,
        corpus: str = "bible",
        length: int = 2048,
        seed: int = 0,
        size: int = 1_000_000,
        split: str = "train",
        heldout_fraction: float = 0.05,
    ):
        super().__init__(seed, size)
        self.tokenizer = tokenizer
        self.windows = CorpusWindows(tokenizer, corpus, length, split, heldout_fraction)

    @property
    def span(self) -> tuple[int, int]:
        return self.windows.span

    def window(self, index: int) -> tuple[int, int]:
        """Token range [start, end) of the corpus that sample `index` reads."""
        return self.windows.window(sample_rng(self.seed, check_index(index, self.size)))

    def _make(self, rng: random.Random) -> Sample:
        ids = self.windows.ids(self.windows.window(rng))
        return Sample(ids, ids, tuple(sentence_starts(self.tokenizer, ids)))


class MixtureDataset:
    """Sample i comes from component k with probability weights[k] / sum(weights), at an index drawn uniformly
    from that component (with replacement); both draws depend only on (seed, i)."""

    def __init__(self, datasets: Sequence, weights: Sequence[float], seed: int = 0, size: int = 1_000_000,
                 names: Sequence[str] | None = None):
        if not datasets or len(datasets) != len(weights):
            raise ValueError(f"need one weight per dataset (got {len(datasets)} datasets and {len(weights)} weights)")
        if names is not None and len(names) != len(datasets):
            raise ValueError(f"need one name per dataset (got {len(datasets)} datasets and {len(names)} names)")
        if any(not w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be non-negative numbers with a positive sum (got {list(weights)})")
        if size < 1:
            raise ValueError(f"size must be at least 1 (got {size})")
        self.datasets = list(datasets)
        self.weights = [w / sum(weights) for w in weights]
        self.seed = seed
        self.size = size
        self.names = list(names) if names is not None else [f"dataset {k}" for k in range(len(self.datasets))]

    def __len__(self) -> int:
        return self.size

    def source_of(self, index: int) -> str:
        """The name of the dataset sample `index` comes from (what the training metrics and loss plot show)."""
        return self.names[self.component(index)[0]]

    def component(self, index: int) -> tuple[int, int]:
        """(dataset, index in it) of sample `index`."""
        rng = sample_rng(self.seed, check_index(index, self.size), stream="mixture")
        k = rng.choices(range(len(self.datasets)), weights=self.weights)[0]
        return k, rng.randrange(len(self.datasets[k]))

    def __getitem__(self, index: int) -> Sample:
        k, j = self.component(index)
        return self.datasets[k][j]
