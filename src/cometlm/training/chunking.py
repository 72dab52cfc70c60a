"""Chunk plans as training augmentation (METHOD.md section 3).

At inference the model cuts text into fixed chunks of C from the start, but where a chunk boundary falls
relative to the text is arbitrary (a prompt can end anywhere in a chunk). Training on varied cuts keeps the
memories from depending on one alignment. A plan is a list of chunk sizes in 1..C summing to the sequence
length; `plan_batch` pads plans into the (B, T) `chunk_sizes` tensor that `CometForCausalLM.forward` takes.

Modes, for a sequence of n tokens:
- fixed: C, C, ..., n mod C (what inference does);
- right_aligned: n mod C first (a short first chunk), then full chunks, so the sequence *ends* on a chunk
  boundary; identical to fixed when C divides n;
- uniform: the fewest chunks, ceil(n / C), with sizes as equal as possible (larger ones first);
- random: sizes drawn uniformly from [min_chunk, C]; the last chunk is whatever remains;
- boundary: greedy, each chunk ends at the last sentence/turn boundary that leaves it between min_chunk and C
  tokens, or is a full C chunk when no boundary does.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch

MODES = ("fixed", "right_aligned", "uniform", "random", "boundary")


@dataclass(frozen=True)
class ChunkPlanner:
    """Draws one chunk mode per sequence with the given probabilities, then plans its chunks.

    The `p_*` are relative weights: they are normalised to sum to 1, so only their ratios matter.
    """

    chunk_size: int
    p_fixed: float = 0.6
    p_right_aligned: float = 0.1
    p_uniform: float = 0.1
    p_random: float = 0.1
    p_boundary: float = 0.1
    min_chunk: int = 1

    def __post_init__(self):
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 (got {self.chunk_size})")
        if not 1 <= self.min_chunk <= self.chunk_size:
            raise ValueError(f"min_chunk must lie in 1..chunk_size={self.chunk_size} (got {self.min_chunk})")
        weights = self._weights()
        bad = {mode: w for mode, w in zip(MODES, weights) if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(f"chunk mode probabilities must be finite and non-negative (got {_named(bad)})")
        if sum(weights) <= 0:
            raise ValueError("at least one chunk mode probability must be positive (all are 0)")

    @property
    def probabilities(self) -> dict[str, float]:
        """Normalised probability of each mode."""
        weights = self._weights()
        return {mode: w / sum(weights) for mode, w in zip(MODES, weights)}

    def plan(self, length: int, rng: random.Random, boundaries: Sequence[int] = ()) -> list[int]:
        """Chunk sizes for one sequence of `length` tokens, in a mode drawn from `rng`. `boundaries` are token
        offsets where a sentence or turn begins (used by the boundary mode; offsets outside (0, length) are
        ignored)."""
        mode = rng.choices(MODES, weights=self._weights())[0]
        return self.plan_mode(mode, length, rng, boundaries)

    def plan_mode(self, mode: str, length: int, rng: random.Random, boundaries: Sequence[int] = ()) -> list[int]:
        """Chunk sizes for `length` tokens in a given mode ([] for an empty sequence)."""
        if mode not in MODES:
            raise ValueError(f"unknown chunk mode {mode!r}; choose one of {MODES}")
        if length < 0:
            raise ValueError(f"length must be >= 0 (got {length})")
        if length == 0:
            return []
        c, n = self.chunk_size, length
        if mode == "fixed":
            return [c] * (n // c) + ([n % c] if n % c else [])
        if mode == "right_aligned":
            return ([n % c] if n % c else []) + [c] * (n // c)
        if mode == "uniform":
            k = -(-n // c)
            return [n // k + 1] * (n % k) + [n // k] * (k - n % k)
        if mode == "random":
            return self._random(n, rng)
        return self._at_boundaries(n, boundaries)

    def plan_batch(
        self, lengths: Sequence[int] | torch.Tensor, rng: random.Random, boundaries: Sequence[Sequence[int]] | None = None
    ) -> torch.LongTensor:
        """(B, T) chunk plans for a right-padded batch, zero-padded after each stream's last chunk: pass
        `attention_mask.sum(1)` as `lengths` and the result as `forward(chunk_sizes=...)`."""
        lengths = [int(n) for n in lengths]
        if boundaries is None:
            boundaries = [()] * len(lengths)
        if len(boundaries) != len(lengths):
            raise ValueError(f"need one boundary list per sequence (got {len(boundaries)} for {len(lengths)} sequences)")
        plans = [self.plan(n, rng, b) for n, b in zip(lengths, boundaries)]
        out = torch.zeros((len(plans), max(map(len, plans), default=0)), dtype=torch.long)
        for row, plan in enumerate(plans):
            out[row, : len(plan)] = torch.tensor(plan, dtype=torch.long)
        return out

    def _weights(self) -> list[float]:
        return [self.p_fixed, self.p_right_aligned, self.p_uniform, self.p_random, self.p_boundary]

    def _random(self, n: int, rng: random.Random) -> list[int]:
        sizes: list[int] = []
        while n > 0:
            size = min(rng.randint(self.min_chunk, self.chunk_size), n)
            sizes.append(size)
            n -= size
        return sizes

    def _at_boundaries(self, n: int, boundaries: Sequence[int]) -> list[int]:
        cuts = sorted({b for b in boundaries if 0 < b < n})
        sizes, start = [], 0
        while n - start > self.chunk_size:
            # the last cut in [start + min_chunk, start + C], else a full chunk
            i = bisect.bisect_right(cuts, start + self.chunk_size) - 1
            end = cuts[i] if i >= 0 and cuts[i] >= start + self.min_chunk else start + self.chunk_size
            sizes.append(end - start)
            start = end
        return sizes + [n - start]


def _named(values: dict[str, float]) -> str:
    return ", ".join(f"p_{mode}={value}" for mode, value in values.items())
