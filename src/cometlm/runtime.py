"""Process-level helpers: keeping long streams at a flat resident memory, and measuring it.

glibc's allocator keeps large freed buffers in its heaps (its mmap threshold rises after each large free), so
the resident set of a long stream drifts upward in steps although the live tensors per chunk never change
(measured: 1006 -> 1346 MiB over 128 chunks of SmolLM2-135M, with a constant 25 MiB memory state).
Returning free pages to the system every few seconds of reading keeps it flat; doing it after every chunk made
the next chunk fault its whole working set in anew (about 5,000 page faults a 128-token chunk, 2-4% of the
reading time: ``PeriodicTrim``). Elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
import time


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name is not None else None
    except OSError:
        return None


def _malloc_trim():
    return getattr(_libc(), "malloc_trim", None)  # None: not glibc


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def limit_heap_fragmentation(arenas: int = 2) -> bool:
    """For a process that runs for days, making and freeing blocks of the same few sizes from several threads (a
    server's state files and states): at most ``arenas`` glibc malloc arenas, so the threads share a few heaps
    instead of fragmenting one each. Call it before the threads start. (A fixed mmap threshold as well, so that
    freed state files go back to the system, made batched reading twice as slow: every large activation was then
    mapped and faulted in anew. Measured on the server: docs/experiments/serve-rss.) Returns whether it applied
    (glibc only)."""
    mallopt = getattr(_libc(), "mallopt", None)
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> None:
    """Gives freed heap pages back to the operating system (glibc ``malloc_trim``)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


READ_TRIM_INTERVAL_S = 2.0  # how often a loop over chunks gives its freed pages back


class PeriodicTrim:
    """``release_free_memory`` for a loop: calling it trims only if ``interval_s`` seconds (of ``clock``) have
    passed since its last trim (the first call always trims). Returns whether it trimmed."""

    def __init__(self, interval_s: float = READ_TRIM_INTERVAL_S, clock=time.monotonic):
        self.interval_s, self.clock, self.last = interval_s, clock, None

    def __call__(self) -> bool:
        now = self.clock()
        if self.last is not None and now - self.last < self.interval_s:
            return False
        release_free_memory()
        self.last = self.clock()
        return True


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
