"""The RAM side of the session store: the bytes of state files by session id, least recently used dropped first,
within a byte budget. Every state in it is also on disk, so dropping one loses nothing; the budget is what keeps a
server's resident memory flat however many sessions it holds.

It keeps a state file's bytes, not the decoded state: one block per session instead of a few tensors per layer, so
entries that come and go in any order leave no holes in the heap (keeping decoded states, a tiny-model server's
resident memory grew by about 1 KB per append; docs/experiments/serve-rss). Each block lives in an anonymous map of
its own, outside malloc's heaps, where megabyte blocks kept for minutes among short-lived ones would leave holes;
a hit returns a copy as bytes."""

from __future__ import annotations

import mmap
import threading
from collections import OrderedDict


class StateCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, mmap.mmap] = OrderedDict()
        self.nbytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            block = self._entries.get(key)
            if block is None:
                return None
            self._entries.move_to_end(key)
            return block[:]

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._pop(key)
            if len(data) > self.budget_bytes:
                return
            block = mmap.mmap(-1, len(data))
            block.write(data)
            self._entries[key] = block
            self.nbytes += len(data)
            while self.nbytes > self.budget_bytes:
                self._pop(next(iter(self._entries)))

    def drop(self, key: str) -> None:
        with self._lock:
            self._pop(key)

    def _pop(self, key: str) -> None:
        block = self._entries.pop(key, None)
        if block is not None:
            self.nbytes -= len(block)
            block.close()
