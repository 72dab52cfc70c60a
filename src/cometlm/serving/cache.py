"""The RAM side of the session store: the bytes of state files by session id, least recently used dropped first,
within a byte budget. Every state in it is also on disk, so dropping one loses nothing; the budget is what keeps a
server's resident memory flat however many sessions it holds.

It keeps a state file's bytes, not the decoded state: one block per session instead of a few tensors per layer, so
entries that come and go in any order leave no holes in the heap (keeping decoded states, a tiny-model server's
resident memory grew by about 1 KB per append; docs/experiments/serve-rss). Decoding on a hit is one copy."""

from __future__ import annotations

import threading
from collections import OrderedDict


class StateCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self.nbytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
            return data

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._pop(key)
            if len(data) > self.budget_bytes:
                return
            self._entries[key] = data
            self.nbytes += len(data)
            while self.nbytes > self.budget_bytes:
                self._pop(next(iter(self._entries)))

    def drop(self, key: str) -> None:
        with self._lock:
            self._pop(key)

    def _pop(self, key: str) -> None:
        data = self._entries.pop(key, None)
        if data is not None:
            self.nbytes -= len(data)
