"""The RAM side of the session store: memory states by session id, least recently used dropped first, within a
byte budget. Every state in it is also on disk, so dropping one loses nothing; the budget is what keeps a server's
resident memory flat however many sessions it holds."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..state import MemoryState


class StateCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._states: OrderedDict[str, MemoryState] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.nbytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: str) -> MemoryState | None:
        with self._lock:
            state = self._states.get(key)
            if state is not None:
                self._states.move_to_end(key)
            return state

    def put(self, key: str, state: MemoryState) -> None:
        size = state.nbytes()
        with self._lock:
            self._pop(key)
            if size > self.budget_bytes:
                return
            self._states[key], self._sizes[key] = state, size
            self.nbytes += size
            while self.nbytes > self.budget_bytes:
                self._pop(next(iter(self._states)))

    def drop(self, key: str) -> None:
        with self._lock:
            self._pop(key)

    def _pop(self, key: str) -> None:
        if self._states.pop(key, None) is not None:
            self.nbytes -= self._sizes.pop(key)
