"""The schedule cost model and the chunk blocks: closed forms the event simulation must reproduce."""

import itertools

import pytest

from cometlm.parallel.blocks import active_ranks, chunk_blocks
from cometlm.parallel.simulator import (
    QWEN3_4B,
    CometSizes,
    Costs,
    calibrate,
    ideal_speedup,
    memory_per_rank,
    naive_time,
    single_process_time,
    wavefront_time,
)


def test_blocks_are_contiguous_cover_every_chunk_and_differ_by_at_most_one():
    for chunks, ranks in itertools.product(range(12), range(1, 6)):
        blocks = chunk_blocks(chunks, ranks)
        assert len(blocks) == ranks
        assert [t for block in blocks for t in block] == list(range(chunks))
        sizes = [len(b) for b in blocks]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        assert sum(1 for s in sizes if s) == active_ranks(chunks, ranks)  # the working ranks form a prefix


@pytest.mark.parametrize("layers, ranks, per_rank", [(30, 2, 1), (36, 4, 4), (64, 16, 2), (5, 64, 1), (1, 3, 2)])
def test_free_messages_give_the_ideal_speedup(layers, ranks, per_rank):
    costs = Costs(forward=1.0, backward=2.0)
    chunks = ranks * per_rank
    step = per_rank * (costs.forward + costs.backward)
    assert wavefront_time(layers, ranks, chunks, costs) == pytest.approx((layers + ranks - 1) * step)
    assert naive_time(layers, ranks, chunks, costs) == pytest.approx(ranks * layers * step)
    speedup = naive_time(layers, ranks, chunks, costs) / wavefront_time(layers, ranks, chunks, costs)
    assert speedup == pytest.approx(ideal_speedup(layers, ranks))
    assert ideal_speedup(36, 4) == pytest.approx(3.6923, abs=1e-4)  # METHOD.md: 3.7x for P = 4, L = 36


def test_uneven_blocks_follow_the_longest_path():
    """The wavefront's critical path visits every rank once and spends the other L-1 layer steps on the largest
    block: (T + (L-1) n_max) steps forward, the same backward."""
    costs = Costs(forward=1.0, backward=3.0)
    for layers, ranks, chunks in [(3, 2, 5), (7, 3, 11), (30, 4, 9), (4, 5, 3)]:
        largest = max(len(b) for b in chunk_blocks(chunks, ranks))
        expected = (chunks + (layers - 1) * largest) * (costs.forward + costs.backward)
        assert wavefront_time(layers, ranks, chunks, costs) == pytest.approx(expected)


def test_message_costs_add_once_per_boundary_in_each_direction():
    layers, ranks, per_rank = 36, 8, 2
    free, costly = Costs(1.0, 2.0), Costs(1.0, 2.0, latency=0.5, transfer=0.01)
    chunks = ranks * per_rank
    extra_wavefront = wavefront_time(layers, ranks, chunks, costly) - wavefront_time(layers, ranks, chunks, free)
    extra_naive = naive_time(layers, ranks, chunks, costly) - naive_time(layers, ranks, chunks, free)
    assert extra_wavefront == pytest.approx(2 * (ranks - 1) * costly.message(1))  # small next to a layer step
    assert extra_naive == pytest.approx(2 * (ranks - 1) * costly.message(layers))  # one message of all layers


def test_one_rank_is_one_process_and_the_head_is_paid_once_per_chunk():
    costs = Costs(1.0, 2.0, latency=9.0, head=5.0)
    for schedule in (wavefront_time, naive_time):
        assert schedule(12, 1, 7, costs) == pytest.approx(single_process_time(12, 7, costs))


def test_calibration_reproduces_the_measurements_it_was_given():
    costs = calibrate(layers=30, chunks=8, single=20.0, wavefront=11.0)
    assert single_process_time(30, 8, costs) == pytest.approx(20.0)
    assert wavefront_time(30, 2, 8, costs) == pytest.approx(11.0)
    assert calibrate(30, 8, 20.0, 5.0).latency == 0  # faster than the model allows: no negative message cost


def test_memory_estimate_splits_activations_across_ranks_and_not_weights():
    sizes = CometSizes()
    tokens = 128 * 1024  # 64 chunks of 2048
    one, sixteen = memory_per_rank(QWEN3_4B, sizes, tokens, 1), memory_per_rank(QWEN3_4B, sizes, tokens, 16)
    assert sixteen["checkpoints"] == pytest.approx(one["checkpoints"] / 16)
    for key in ("weights", "trainable", "recompute", "messages"):
        assert sixteen[key] == one[key]
    assert QWEN3_4B.parameters() == pytest.approx(4.02e9, rel=0.01)  # Qwen3-4B: 4.0B parameters
    # CoMeT's own parameters: 36 d (+1) per layer plus (M + 1) d learned tokens (METHOD.md section 2)
    d = QWEN3_4B.hidden
    assert sizes.parameters(QWEN3_4B) == QWEN3_4B.layers * (36 * d + 1) + (sizes.global_slots + 1) * d
