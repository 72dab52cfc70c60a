"""One answer's text as it is generated: incremental detokenisation, stop strings and the finish reason.

The scheduler pushes each new token; ``push`` returns the text that may be sent now. Text that could still turn
out to be the start of a stop string, or an incomplete UTF-8 character, is held back until it is decided.
"""

from __future__ import annotations

from typing import Sequence


class TextStream:
    """``finish_reason``: None while generating, then "stop" (an end-of-sequence token or a stop string),
    "length" (``max_tokens`` reached) or "cancelled" (the client went away)."""

    def __init__(self, tokenizer, stop: Sequence[str], max_tokens: int, eos_ids: Sequence[int]):
        self.tokenizer, self.stop, self.max_tokens, self.eos_ids = tokenizer, tuple(stop), max_tokens, set(eos_ids)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> str:
        """Takes one generated token; returns the new text that is safe to send (maybe empty)."""
        if self.done:
            return ""
        self.ids.append(token)
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = self._stop_at(full)
        if cut is not None:
            return self._finish("stop", full[:cut])
        if token in self.eos_ids:
            return self._finish("stop", full)
        if len(self.ids) >= self.max_tokens:
            return self._finish("length", full)
        if full.endswith("\ufffd"):  # the bytes of a character are split over tokens: wait for the rest
            return ""
        ready = full[: len(full) - self._held(full)]
        delta, self.sent, self.text = ready[self.sent:], max(self.sent, len(ready)), full
        return delta

    def cancel(self) -> None:
        if not self.done:
            self.finish_reason = "cancelled"

    def _finish(self, reason: str, text: str) -> str:
        self.finish_reason, self.text = reason, text
        delta, self.sent = text[self.sent:], len(text)
        return delta

    def _stop_at(self, text: str) -> int | None:
        found = [i for i in (text.find(s, max(0, self.sent - len(s))) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _held(self, text: str) -> int:
        """Length of the longest end of ``text`` that a stop string starts with."""
        return max((n for s in self.stop for n in range(min(len(s) - 1, len(text)), 0, -1) if s.startswith(text[-n:])),
                   default=0)
