"""Chunk plans as augmentation: every plan is valid, each mode has its shape, plans drive forward."""

import math
import random
from collections import Counter

import pytest
import torch

from cometlm.training.chunking import MODES, ChunkPlanner
from cometlm.training.data import Sample, collate
from conftest import SMALL, random_ids, tiny_comet


def only(mode: str, chunk_size: int, min_chunk: int = 1) -> ChunkPlanner:
    weights = {f"p_{m}": float(m == mode) for m in MODES}
    return ChunkPlanner(chunk_size, min_chunk=min_chunk, **weights)


def text_sample(n: int, boundaries=()) -> Sample:
    ids = random_ids(n, seed=n).tolist()
    return Sample(ids, ids, boundaries)


def cases(count: int = 300):
    """(chunk size, min_chunk, length, sorted boundaries, rng) over many seeds, lengths 0..120."""
    for seed in range(count):
        rng = random.Random(seed)
        c = rng.randint(1, 16)
        n = rng.randint(0, 120)
        boundaries = sorted(rng.sample(range(-3, n + 4), k=rng.randint(0, min(n + 7, 30))))
        yield c, rng.randint(1, c), n, boundaries, rng


@pytest.mark.parametrize("mode", MODES)
def test_every_plan_is_valid(mode):
    for c, min_chunk, n, boundaries, rng in cases():
        plan = only(mode, c, min_chunk).plan(n, rng, boundaries)
        assert sum(plan) == n, (mode, c, n, plan)
        assert all(1 <= size <= c for size in plan), (mode, c, n, plan)


def test_fixed_and_right_aligned_shapes():
    for c, _, n, _, rng in cases():
        fixed = only("fixed", c).plan(n, rng)
        right = only("right_aligned", c).plan(n, rng)
        assert all(size == c for size in fixed[:-1])
        assert all(size == c for size in right[1:])
        assert right == fixed[::-1]  # the short chunk moves to the front
    assert only("right_aligned", 8).plan(21, random.Random(0)) == [5, 8, 8]


def test_uniform_shape():
    for c, _, n, _, rng in cases():
        plan = only("uniform", c).plan(n, rng)
        assert len(plan) == math.ceil(n / c)
        assert plan == sorted(plan, reverse=True) and (not plan or plan[0] - plan[-1] <= 1)
    assert only("uniform", 8).plan(17, random.Random(0)) == [6, 6, 5]


def test_random_shape():
    seen = set()
    for c, min_chunk, n, _, rng in cases():
        plan = only("random", c, min_chunk).plan(n, rng)
        assert all(min_chunk <= size <= c for size in plan[:-1])
        seen.update(plan[:-1])
    assert len(seen) == 16  # every size in 1..16 occurs


def test_boundary_mode_cuts_at_the_last_boundary_that_fits():
    for c, min_chunk, n, boundaries, rng in cases():
        plan = only("boundary", c, min_chunk).plan(n, rng, boundaries)
        inside = {b for b in boundaries if 0 < b < n}
        start = 0
        for size in plan[:-1]:
            fitting = [b for b in inside if start + min_chunk <= b <= start + c]
            assert start + size == (max(fitting) if fitting else start + c)
            start += size
        assert 0 < n - start <= c or n == 0  # the last chunk is what remains
    assert only("boundary", 8).plan(20, random.Random(0), boundaries=(3, 5, 11, 17)) == [5, 6, 6, 3]
    assert only("boundary", 8).plan(20, random.Random(0), boundaries=()) == [8, 8, 4]
    assert only("boundary", 8, min_chunk=4).plan(12, random.Random(0), boundaries=(2, 10)) == [8, 4]


def test_modes_are_drawn_with_their_probabilities():
    planner = ChunkPlanner(8, p_fixed=4, p_right_aligned=2, p_uniform=2, p_random=1, p_boundary=1)
    assert planner.probabilities == {"fixed": 0.4, "right_aligned": 0.2, "uniform": 0.2, "random": 0.1, "boundary": 0.1}
    shapes = {(8, 8, 4): "fixed", (4, 8, 8): "right_aligned", (7, 7, 6): "uniform", (5, 6, 6, 3): "boundary"}
    rng = random.Random(0)
    counts = Counter(shapes.get(tuple(planner.plan(20, rng, (5, 11, 17))), "random") for _ in range(4000))
    for mode, p in planner.probabilities.items():
        assert abs(counts[mode] / 4000 - p) < 0.03, counts


def test_plans_are_a_function_of_the_rng():
    planner = ChunkPlanner(8)
    first = [planner.plan(50, random.Random(3), (7, 20)) for _ in range(2)]
    assert first[0] == first[1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(chunk_size=0), "chunk_size must be at least 1"),
        (dict(chunk_size=8, min_chunk=9), "min_chunk must lie in 1..chunk_size=8"),
        (dict(chunk_size=8, p_random=-0.1), r"finite and non-negative \(got p_random=-0.1\)"),
        (dict(chunk_size=8, p_uniform=float("nan")), "finite and non-negative"),
        (dict(chunk_size=8, p_fixed=0, p_right_aligned=0, p_uniform=0, p_random=0, p_boundary=0), "must be positive"),
        (dict(chunk_size=8, aligned=2), "aligned must be 0 or 1"),
    ],
)
def test_bad_planner_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChunkPlanner(**kwargs)


def test_bad_plan_requests():
    planner = ChunkPlanner(8)
    with pytest.raises(ValueError, match="length must be >= 0"):
        planner.plan(-1, random.Random(0))
    with pytest.raises(ValueError, match="unknown chunk mode 'diagonal'"):
        planner.plan_mode("diagonal", 10, random.Random(0))
    with pytest.raises(ValueError, match="one boundary list per sequence"):
        planner.plan_batch([10, 12], random.Random(0), boundaries=[()])


def test_plan_batch_pads_with_zeros():
    plan = ChunkPlanner(8).plan_batch(torch.tensor([21, 3, 0, 16]), random.Random(0))
    assert plan.dtype == torch.long and plan.shape[0] == 4
    assert plan.sum(1).tolist() == [21, 3, 0, 16]
    for row in plan.tolist():
        nonzero = [s for s in row if s]
        assert row == nonzero + [0] * (len(row) - len(nonzero))
    assert plan.shape[1] == max(len([s for s in row if s]) for row in plan.tolist())


def test_an_aligned_stream_gets_the_plan_it_would_get_alone():
    """Aligned draws once per batch; a batch of one stream, and the batch's longest stream in random mode, get
    exactly what an independent draw from the same generator gives."""
    for c, min_chunk, n, boundaries, rng in cases():
        weights = dict(p_fixed=1, p_right_aligned=1, p_uniform=1, p_random=2, p_boundary=1)
        seed = rng.random()
        alone = ChunkPlanner(c, min_chunk=min_chunk, **weights).plan_batch([n], random.Random(seed), [boundaries])
        aligned = ChunkPlanner(c, min_chunk=min_chunk, aligned=1, **weights)
        assert torch.equal(aligned.plan_batch([n], random.Random(seed), [boundaries]), alone)
        assert aligned.aligned is True


def test_aligned_streams_share_a_mode_and_random_cuts():
    lengths = [40, 77, 100, 13, 0]
    for seed in range(200):
        rows = ChunkPlanner(8, p_fixed=1, p_right_aligned=1, p_random=1, p_uniform=0, p_boundary=0, min_chunk=2,
                            aligned=True).plan_batch(lengths, random.Random(seed)).tolist()
        plans = [[size for size in row if size] for row in rows]
        assert [sum(plan) for plan in plans] == lengths
        fixed = [plan == [8] * (n // 8) + ([n % 8] if n % 8 else []) for plan, n in zip(plans, lengths)]
        right = [plan == ([n % 8] if n % 8 else []) + [8] * (n // 8) for plan, n in zip(plans, lengths)]
        if all(fixed) or all(right):
            continue
        longest = plans[2]  # random: every stream follows the longest's cuts, its own last chunk cut short
        assert all(plan[:-1] == longest[: len(plan) - 1] and plan[-1] <= longest[len(plan) - 1] for plan in plans if plan)


def test_aligned_plans_run_fewer_rows():
    """A batch reads chunk t of every stream at the width of the widest: over 300 batches of four lengths of
    1,024-2,048, aligned plans (g8's mode weights) pad far less than independent ones."""
    weights = dict(p_fixed=0.3, p_right_aligned=0.4, p_uniform=0.1, p_random=0.2, p_boundary=0, min_chunk=32)
    rows = {}
    for aligned in (False, True):
        planner, total = ChunkPlanner(128, aligned=aligned, **weights), 0
        for seed in range(300):
            lengths = random.Random(seed).choices(range(1024, 2049), k=4)
            plan = planner.plan_batch(lengths, random.Random(seed))
            total += 4 * int(plan.max(dim=0).values.sum())
        rows[aligned] = total
    assert rows[True] < 0.9 * rows[False], rows


def test_plan_batch_drives_forward():
    comet = tiny_comet()
    samples = [text_sample(n, boundaries=(4, 9, 12)) for n in (21, 13, 30)]
    batch = collate(samples, pad_id=0)
    rng = random.Random(0)
    for planner in (ChunkPlanner(SMALL.chunk_size), ChunkPlanner(SMALL.chunk_size, aligned=True)):
        for _ in range(5):
            chunk_sizes = planner.plan_batch(batch["attention_mask"].sum(1), rng, [s.boundaries for s in samples])
            out = comet(**batch, chunk_sizes=chunk_sizes)
            assert torch.isfinite(out.loss)
    out.loss.backward()  # gradients flow through a planned forward


@torch.no_grad()
def test_fixed_plans_reproduce_the_default_forward():
    comet = tiny_comet()
    samples = [text_sample(n) for n in (21, 16, 5)]
    batch = collate(samples, pad_id=0)
    plan = only("fixed", SMALL.chunk_size).plan_batch(batch["attention_mask"].sum(1), random.Random(0))
    planned, default = comet(**batch, chunk_sizes=plan), comet(**batch)
    torch.testing.assert_close(planned.loss, default.loss, atol=0, rtol=0)
