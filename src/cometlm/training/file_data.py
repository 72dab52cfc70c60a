"""Training samples from the user's files: JSONL of texts or chats, and plain text files (see `data.py` for what
every dataset promises). Each file is read and tokenized once, up front; a bad record is raised or listed with its
file and line, never dropped silently."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cometlm.bundled import encode
from cometlm.tasks.logs import jsonl_records
from cometlm.tasks.retrieval import sentence_starts

from .data import IGNORE, DataError, Sample, check_index

CHAT_ROLES = ("system", "user", "assistant")
ON_ERROR = ("skip", "fail")
_ERRORS_IN_REPORT = 5


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
        return self._samples[check_index(index, len(self._samples))].unpack()

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
