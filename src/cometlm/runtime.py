"""Process-level helpers: keeping long streams at a flat resident memory, and measuring it.

glibc's allocator keeps large freed buffers in its heaps (its mmap threshold rises after each large free), so
the resident set of a long stream drifts upward in steps although the live tensors per chunk never change
(measured: 1006 -> 1346 MiB over 128 chunks of SmolLM2-135M, with a constant 25 MiB memory state).
Returning free pages to the system after each closed chunk keeps it flat. Elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> None:
    """Gives freed heap pages back to the operating system (glibc ``malloc_trim``); cheap next to a chunk."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
