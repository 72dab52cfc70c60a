"""Training samples from JSONL and text files, the bundled corpora and the retrieval tasks, and batching.

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
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cometlm.bundled import encode
from cometlm.tasks.corpora import corpus_tokens
from cometlm.tasks.logs import jsonl_records
from cometlm.tasks.retrieval import RetrievalSample, needle_sample, passkey_sample, sentence_starts

IGNORE = -100
CHAT_ROLES = ("system", "user", "assistant")
ON_ERROR = ("skip", "fail")
_ERRORS_IN_REPORT = 5


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


def sample_rng(seed: int, index: int, stream: str = "") -> random.Random:
    """The random generator of sample `index`: a function of (stream, seed, index) only, identical in every
    process (string seeds are hashed with SHA-512, unlike `hash()`, which is salted per process)."""
    return random.Random(f"{stream}/{seed}/{index}")


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


def _check_index(index: int, size: int) -> int:
    """Python sequence indexing: negative indices count from the end; IndexError ends iteration."""
    if not -size <= index < size:
        raise IndexError(f"sample index {index} out of range for a dataset of {size}")
    return index % size


# --------------------------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class _Packed:
    """A sample held as int32 arrays, a tenth of the memory of lists of Python ints."""

    ids: np.ndarray
    labels: np.ndarray | None  # None: every token is a target
    boundaries: np.ndarray

    def unpack(self) -> Sample:
        ids = self.ids.tolist()
        labels = ids if self.labels is None else self.labels.tolist()
        return Sample(ids, labels, tuple(self.boundaries.tolist()))


class _FileDataset:
    """Reading, error bookkeeping and reporting shared by the file datasets.

    Subclasses call `_reject` for each bad record, `_add` for each sample, then `_finish`.
    """

    _record_name = "records"  # what one unit of input is, for the report
    _resize_note = ""  # what happens to a record longer than max_tokens, with {n} and {max_tokens}

    def __init__(self, tokenizer, max_tokens: int, on_error: str, source: str):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR} (got {on_error!r})")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1 (got {max_tokens})")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.on_error = on_error
        self.source = source
        self.errors: list[str] = []  # "path:line: reason", one per skipped record
        self.records = 0  # records read, good and bad
        self.resized = 0  # good records longer than max_tokens
        self._samples: list[_Packed] = []

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> Sample:
        return self._samples[_check_index(index, len(self._samples))].unpack()

    def report(self) -> str:
        """One line: what was read, what became of long records, and every skipped record (the first few by
        name, the rest counted)."""
        parts = [f"read {self.records} {self._record_name} from {self.source} into {len(self._samples)} samples"]
        if self.resized:
            parts.append(self._resize_note.format(n=self.resized, max_tokens=self.max_tokens))
        if self.errors:
            shown = ", ".join(self.errors[:_ERRORS_IN_REPORT])
            more = len(self.errors) - _ERRORS_IN_REPORT
            parts.append(f"skipped {len(self.errors)} bad {self._record_name}: {shown}")
            if more > 0:
                parts[-1] += f" and {more} more (see .errors)"
        return "; ".join(parts)

    def _reject(self, where: str, reason: str) -> None:
        message = f"{where}: {reason}"
        if self.on_error == "fail":
            raise DataError(message)
        self.errors.append(message)

    def _add(self, ids: Sequence[int], labels: Sequence[int] | None, boundaries: Sequence[int]) -> None:
        self._samples.append(_Packed(_int32(ids), None if labels is None else _int32(labels), _int32(boundaries)))

    def _add_text(self, ids: list[int]) -> None:
        """Split a text into consecutive windows of max_tokens (loss on every token), counting texts that needed
        more than one. Windows share no tokens, so the first token of each window has no context."""
        if len(ids) > self.max_tokens:
            self.resized += 1
        for start in range(0, len(ids), self.max_tokens):
            window = ids[start : start + self.max_tokens]
            self._add(window, None, sentence_starts(self.tokenizer, window))

    def _finish(self) -> None:
        if not self._samples:
            raise DataError(f"{self.source}: no usable {self._record_name} ({self.report()})")


def _int32(values: Sequence[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


class JsonlTextDataset(_FileDataset):
    """JSONL with a non-empty string `text` per line; loss on every token.

    A text longer than `max_tokens` is split into consecutive windows of `max_tokens` (the last one shorter), so
    no text is lost; boundaries are sentence starts.
    """

    _resize_note = "split {n} texts longer than {max_tokens} tokens into windows"

    def __init__(self, path: str | Path, tokenizer, max_tokens: int, on_error: str = "skip"):
        super().__init__(tokenizer, max_tokens, on_error, source=str(path))
        for where, record, problem in jsonl_records(Path(path)):
            self.records += 1
            problem = problem or _text_problem(record)
            if problem:
                self._reject(where, problem)
                continue
            self._add_text(encode(tokenizer, record["text"]))
        self._finish()


def _text_problem(record: dict) -> str | None:
    if "text" not in record:
        return f"no 'text' field (fields: {', '.join(sorted(record)) or 'none'})"
    text = record["text"]
    if not isinstance(text, str):
        return f"'text' is {type(text).__name__}, not a string"
    if not text.strip():
        return "empty 'text'"
    return None


class JsonlChatDataset(_FileDataset):
    """JSONL with `messages`, a list of {"role": "system"|"user"|"assistant", "content": str} holding at least
    one assistant turn, rendered with the tokenizer's chat template.

    Labels cover each assistant turn's content and its end-of-turn marker (SmolLM2: `<|im_end|>`), -100
    elsewhere; boundaries are turn starts. A conversation longer than `max_tokens` is truncated to its first
    `max_tokens` tokens (splitting would leave later windows without the turns they answer); one with no
    assistant token left after that is a bad record.
    """

    _resize_note = "truncated {n} conversations longer than {max_tokens} tokens"

    def __init__(self, path: str | Path, tokenizer, max_tokens: int, on_error: str = "skip"):
        super().__init__(tokenizer, max_tokens, on_error, source=str(path))
        for where, record, problem in jsonl_records(Path(path)):
            self.records += 1
            problem = problem or _messages_problem(record)
            if problem:
                self._reject(where, problem)
                continue
            messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
            problem = self._add_chat(messages)
            if problem:
                self._reject(where, problem)
        self._finish()

    def _add_chat(self, messages: list[dict]) -> str | None:
        """Tokenize and label one conversation; returns why it cannot be used, or None."""
        rendering = _render_turns(self.tokenizer, messages)
        if rendering is None:
            return "the chat template does not render this conversation turn by turn, so its assistant turns cannot be found"
        text, turn_starts, assistant_spans = rendering
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(encoded["input_ids"])
        offsets = np.asarray(encoded["offset_mapping"]).reshape(-1, 2)  # (n, 2) character span of each token
        targets = np.zeros(len(ids), dtype=bool)
        for first, end in assistant_spans:  # a token is a target if it overlaps an assistant span
            targets |= (offsets[:, 0] < end) & (offsets[:, 1] > first)
        boundaries = np.unique(np.searchsorted(offsets[:, 0], turn_starts))  # first token of each turn
        if not targets[: self.max_tokens].any():
            return f"no assistant token within the first {self.max_tokens} tokens"
        if len(ids) > self.max_tokens:
            self.resized += 1
            ids, targets = ids[: self.max_tokens], targets[: self.max_tokens]
        self._add(ids, np.where(targets, ids, IGNORE), boundaries[(boundaries > 0) & (boundaries < len(ids))])
        return None


def _messages_problem(record: dict) -> str | None:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {role, content} objects"
    for k, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)):
            return f"message {k} is not an object with string 'role' and 'content'"
        if message["role"] not in CHAT_ROLES:
            return f"message {k} has unknown role {message['role']!r} (expected one of {', '.join(CHAT_ROLES)})"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn (nothing to learn from)"
    if messages[0]["role"] == "assistant":
        return "starts with an assistant turn; add the system or user message it answers"
    return None


def _render_turns(tokenizer, messages: list[dict]) -> tuple[str, list[int], list[tuple[int, int]]] | None:
    """The rendered conversation, the character offset where each turn starts, and the character span of each
    assistant turn's content plus end-of-turn marker; None if the template cannot be read turn by turn.

    The turns are found by rendering growing prefixes of the conversation: turn k is what the first k+1
    messages add to the first k. An assistant turn's learned text starts where the generation prompt (the
    assistant header) ends and stops before the line break that follows its end-of-turn marker, so
    `messages[0]` must not be an assistant turn. This relies only on each rendering extending the previous one,
    which holds for SmolLM2's and most chat templates; for a template that rewrites earlier turns the check
    fails, and the record is reported rather than mislabelled.
    """

    def render(prefix: list[dict], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(prefix, tokenize=False, add_generation_prompt=generation_prompt)

    previous, turn_starts, spans = "", [], []
    for k, message in enumerate(messages):
        upto = render(messages[: k + 1])
        if not upto.startswith(previous):
            return None
        turn_starts.append(len(previous))
        if message["role"] == "assistant":
            header = render(messages[:k], generation_prompt=True)
            if not (header.startswith(previous) and upto.startswith(header)):
                return None
            spans.append((len(header), len(upto.rstrip())))
        previous = upto
    return previous, turn_starts, spans


class TextFilesDataset(_FileDataset):
    """Plain UTF-8 text files, each split into consecutive windows of `max_tokens` (loss on every token);
    boundaries are sentence and line starts. Files that are not UTF-8 or hold only whitespace are bad records."""

    _record_name = "files"
    _resize_note = "split {n} files longer than {max_tokens} tokens into windows"

    def __init__(self, paths: str | Path | Sequence[str | Path], tokenizer, max_tokens: int, on_error: str = "skip"):
        paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        super().__init__(tokenizer, max_tokens, on_error, source=", ".join(map(str, paths)))
        for path in paths:
            self.records += 1
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                line = raw[: e.start].count(b"\n") + 1
                self._reject(f"{path}:{line}", f"not UTF-8 (byte {e.start})")
                continue
            if not text.strip():
                self._reject(str(path), "empty file")
                continue
            self._add_text(encode(tokenizer, text))
        self._finish()


# --------------------------------------------------------------------------------------------------------------
# Generated


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
        index = _check_index(index, self.size)
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
    """Needle-in-a-haystack prompts over the essays (`tasks.needle_sample`); see `RetrievalDataset`."""

    def _build(self, n_tokens: int, depth: float, rng: random.Random) -> RetrievalSample:
        return needle_sample(self.tokenizer, n_tokens, depth, rng)


class CorpusLMDataset(_GeneratedDataset):
    """Random windows of `length` tokens from a bundled corpus ("bible" or "essays"), loss on every token.

    The corpus is split once by position: "heldout" is its last `heldout_fraction` of tokens and "train" the
    rest, and a window never crosses the split, so held-out perplexity is measured on text never trained on.
    """

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
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout' (got {split!r})")
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must lie strictly between 0 and 1 (got {heldout_fraction})")
        self.tokenizer = tokenizer
        self.length = length
        self._ids = corpus_tokens(corpus, tokenizer).numpy()  # (N,) the whole corpus
        cut = int(len(self._ids) * (1.0 - heldout_fraction))
        self.span = (0, cut) if split == "train" else (cut, len(self._ids))  # token range this split reads
        if not 1 <= length <= self.span[1] - self.span[0]:
            raise ValueError(
                f"length must lie in 1..{self.span[1] - self.span[0]}, the size of the {split} split of {corpus!r} "
                f"(got {length}); lower length or change heldout_fraction"
            )

    def window(self, index: int) -> tuple[int, int]:
        """Token range [start, end) of the corpus that sample `index` reads."""
        return self._window(sample_rng(self.seed, _check_index(index, self.size)))

    def _window(self, rng: random.Random) -> tuple[int, int]:
        start = rng.randint(self.span[0], self.span[1] - self.length)
        return start, start + self.length

    def _make(self, rng: random.Random) -> Sample:
        start, end = self._window(rng)
        ids = self._ids[start:end].tolist()
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
        rng = sample_rng(self.seed, _check_index(index, self.size), stream="mixture")
        k = rng.choices(range(len(self.datasets)), weights=self.weights)[0]
        return k, rng.randrange(len(self.datasets[k]))

    def __getitem__(self, index: int) -> Sample:
        k, j = self.component(index)
        return self.datasets[k][j]
