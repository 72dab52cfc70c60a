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

A batch reads chunk t of every stream that still has text together, as wide as the widest of them, for as many
chunk steps as its stream with the most chunks. Independent plans rarely line up (a stream cut at random into chunks
of 32-128 tokens beside three cut into full chunks runs more, narrower steps), so `aligned` draws once per batch: one
mode for every stream, and in random mode one sequence of sizes that each stream follows up to its own length. Each
stream's plan has exactly the distribution it has alone; only the streams of a batch are no longer independent. On
the general adapter's phase g8 (8 samples of 1,024-2,048 tokens a step as two batches of 4, steps 60-89) independent
plans ran 1.13 text rows per real token, aligned ones 1.03 (1.02 with `group_by_length`), and the same steps'
forward and backward 1.13x faster (docs/EXPERIMENTS.md, sessions 31-32).
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
    """Draws one chunk mode per sequence with the given probabilities, then plans its chunks; with `aligned`, one
    mode (and in random mode one sequence of sizes) per batch (`plan_batch`).

    The `p_*` are relative weights: they are normalised to sum to 1, so only their ratios matter.
    """

    chunk_size: int
    p_fixed: float = 0.6
    p_right_aligned: float = 0.1
    p_uniform: float = 0.1
    p_random: float = 0.1
    p_boundary: float = 0.1
    min_chunk: int = 1
    aligned: bool = False

    def __post_init__(self):
        if self.aligned not in (0, 1):  # True/False, or 0/1 from `--chunk-augmentation aligned=1`
            raise ValueError(f"aligned must be 0 or 1 (got {self.aligned!r})")
        object.__setattr__(self, "aligned", bool(self.aligned))
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
        `attention_mask.sum(1)` as `lengths` and the result as `forward(chunk_sizes=...)`. One draw per stream, or
        with `aligned` one per batch (a batch of one stream gets the same plan either way)."""
        lengths = [int(n) for n in lengths]
        if boundaries is None:
            boundaries = [()] * len(lengths)
        if len(boundaries) != len(lengths):
            raise ValueError(f"need one boundary list per sequence (got {len(boundaries)} for {len(lengths)} sequences)")
        if self.aligned:
            plans = self._aligned(lengths, rng, boundaries)
        else:
            plans = [self.plan(n, rng, b) for n, b in zip(lengths, boundaries)]
        out = torch.zeros((len(plans), max(map(len, plans), default=0)), dtype=torch.long)
        for row, plan in enumerate(plans):
            out[row, : len(plan)] = torch.tensor(plan, dtype=torch.long)
        return out

    def _aligned(self, lengths: list[int], rng: random.Random, boundaries: Sequence[Sequence[int]]) -> list[list[int]]:
        """One mode for the batch; in random mode one sequence of sizes, each stream's plan its prefix up to the
        stream's length (the last chunk cut to what remains). The other modes depend only on a stream's own length
        (and boundaries), so they line up as far as the lengths let them."""
        mode = rng.choices(MODES, weights=self._weights())[0]
        if mode != "random":
            return [self.plan_mode(mode, n, rng, b) for n, b in zip(lengths, boundaries)]
        sizes = self._random(max(lengths, default=0), rng)
        plans = []
        for n in lengths:
            plan, total = [], 0
            for size in sizes:
                if total >= n:
                    break
                plan.append(min(size, n - total))
                total += plan[-1]
            plans.append(plan)
        return plans

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
