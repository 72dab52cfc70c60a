"""Which chunks each pipeline rank owns: contiguous blocks, as even as possible (no torch, so the simulator and
the command line can use it)."""

from __future__ import annotations


def chunk_blocks(num_chunks: int, ranks: int) -> list[range]:
    """Splits chunks ``0..num_chunks-1`` into ``ranks`` contiguous blocks whose sizes differ by at most one.

    Larger blocks come first, so with fewer chunks than ranks the ranks that own nothing are the last ones and
    the ranks that do work form a prefix ``0..active-1`` of the pipeline.
    """
    if ranks < 1:
        raise ValueError(f"a pipeline needs at least one rank (got {ranks})")
    if num_chunks < 0:
        raise ValueError(f"num_chunks must be >= 0 (got {num_chunks})")
    base, extra = divmod(num_chunks, ranks)
    blocks, start = [], 0
    for rank in range(ranks):
        size = base + (rank < extra)
        blocks.append(range(start, start + size))
        start += size
    return blocks


def active_ranks(num_chunks: int, ranks: int) -> int:
    """How many ranks own at least one chunk (they form a prefix of the pipeline)."""
    return min(num_chunks, ranks)
