"""Streaming: reading a text in any pieces gives the state of reading it whole, and the state does not grow."""

import random

import torch

from cometlm.generation import open_chunk
from conftest import SMALL, assert_states_equal, random_ids, tiny_comet


def cut(n: int, pieces: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return sorted(rng.sample(range(1, n), pieces - 1)) + [n]


@torch.no_grad()
def test_random_pieces_equal_one_shot(family):
    comet = tiny_comet(family)
    ids = random_ids(2, 45)
    whole = comet.ingest(ids)
    for seed in range(3):
        state, start = comet.init_memory(2), 0
        for end in cut(45, 6, seed):
            state = comet.ingest(ids[:, start:end], state)
            start = end
        assert_states_equal(state, whole)
    assert whole.chunks_closed.tolist() == [5, 5] and whole.pending_len.tolist() == [5, 5]
    # The open chunk's next-token logits equal the one-shot forward's.
    torch.testing.assert_close(open_chunk(comet, whole).logits, comet(ids).logits[:, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_ragged_pieces_equal_one_shot():
    comet = tiny_comet()
    ids = random_ids(2, 40)
    lengths = torch.tensor([40, 23])
    mask = (torch.arange(40)[None] < lengths[:, None]).long()
    whole = comet.ingest(ids, attention_mask=mask)
    state = comet.init_memory(2)
    for start in range(0, 40, 7):  # the second stream reads nothing in its last pieces
        state = comet.ingest(ids[:, start : start + 7], state, attention_mask=mask[:, start : start + 7])
    assert_states_equal(state, whole)


@torch.no_grad()
def test_memory_does_not_grow_with_input_length():
    comet = tiny_comet()
    short = comet.ingest(random_ids(1, 40))
    long = comet.ingest(random_ids(1, 4000))
    assert long.nbytes() == short.nbytes()
    assert long.pending.shape[1] <= SMALL.chunk_size
    assert int(long.chunks_closed) == 499


@torch.no_grad()
def test_queue_keeps_the_newest_rows_and_evicts_padding_first():
    comet = tiny_comet()
    state = comet.ingest(random_ids(1, 9))  # one closed chunk: two beacons
    assert state.layers[0].temp_valid.tolist() == [[False, False, False, True, True]]
    state = comet.ingest(random_ids(1, 16, seed=1), state)  # two more closed chunks: six beacons, capacity five
    assert state.layers[0].temp_valid.all()
    assert bool(state.layers[0].has_global.all())


@torch.no_grad()
def test_closing_the_open_chunk_early_equals_a_right_aligned_plan():
    comet = tiny_comet()
    ids = random_ids(1, 21)
    state = comet.close_open_chunk(comet.ingest(ids[:, :5]))
    assert int(state.pending_len) == 0 and int(state.chunks_closed) == 1
    state = comet.ingest(ids[:, 5:], state)  # chunks of 8 and 8 follow the short first chunk
    planned = comet(ids, chunk_sizes=torch.tensor([[5, 8, 8]])).logits
    torch.testing.assert_close(open_chunk(comet, state).logits, planned[:, -1], atol=1e-5, rtol=1e-5)
