"""The chunk layout of METHOD.md section 1: [ G | T | text with a beacon after every s tokens | R ]."""

import torch

from cometlm import ChunkLayout, CometConfig

CONFIG = CometConfig(chunk_size=8, global_slots=3, temp_stride=4, temp_capacity=5)
T, B, R = ChunkLayout.TEXT, ChunkLayout.BEACON, ChunkLayout.READOUT


def build(text_len, closing, memory_valid=None):
    text_len = torch.tensor(text_len)
    if memory_valid is None:
        memory_valid = torch.ones(len(text_len), 8, dtype=torch.bool)
    return ChunkLayout.build(CONFIG, text_len, int(text_len.max()), torch.tensor(closing), memory_valid)


def test_full_closed_chunk():
    layout = build([8], [True])
    assert layout.num_memory_rows == 3 + 5
    assert layout.stream_kind.tolist() == [T] * 4 + [B] + [T] * 4 + [B] + [R] * 3
    assert layout.position_ids.tolist() == [list(range(8 + 13))]
    assert layout.mask is None  # every row valid: plain causal attention
    assert layout.position_ids.max() + 1 == CONFIG.max_positions


def test_partial_chunk_gets_trailing_beacon_only_when_closed():
    closed = build([5], [True])
    assert closed.stream_kind.tolist() == [T] * 4 + [B] + [T] + [B] + [R] * 3
    open_ = build([5], [False])
    assert open_.stream_kind.tolist() == [T] * 4 + [B] + [T]
    assert open_.readout_slot.numel() == 0


def test_first_chunk_has_no_memory_rows():
    layout = build([8], [True], memory_valid=torch.zeros(1, 8, dtype=torch.bool))
    assert layout.num_memory_rows == 0
    assert layout.position_ids[0, 0] == 0


def test_batch_rows_match_each_stream_alone():
    """Each stream sees, in order and with the same positions, exactly the rows it would have alone."""
    memory_valid = torch.tensor([[1] * 8, [1, 1, 1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    batch = build([8, 5], [True, False], memory_valid)
    for b, (n, close) in enumerate([(8, True), (5, False)]):
        alone = build([n], [close], memory_valid[b : b + 1])
        valid = batch.valid[b]
        assert batch.position_ids[b][valid].tolist() == alone.position_ids[0].tolist()
        kinds = torch.cat([torch.full((batch.num_memory_rows,), -1), batch.stream_kind])[valid]
        alone_kinds = torch.cat([torch.full((alone.num_memory_rows,), -1), alone.stream_kind])
        assert kinds.tolist() == alone_kinds.tolist()
        # A valid row never sees an invalid key; an invalid row sees only itself, so it stays finite.
        mask = batch.mask[b, 0]
        assert not mask[valid][:, ~valid].any()
        assert torch.equal(mask[~valid][:, ~valid], torch.eye(int((~valid).sum()), dtype=torch.bool))


def test_attention_sink_comes_first_in_every_chunk():
    config = CometConfig(chunk_size=8, global_slots=3, temp_stride=4, temp_capacity=5, attention_sink=True)
    layout = ChunkLayout.build(config, torch.tensor([8]), 8, torch.tensor([True]), torch.ones(1, 8, dtype=torch.bool))
    assert layout.n_sink == 1 and layout.stream_kind[0] == ChunkLayout.SINK
    assert layout.position_ids.tolist() == [list(range(config.max_positions))]
    first = ChunkLayout.build(config, torch.tensor([8]), 8, torch.tensor([True]), torch.zeros(1, 8, dtype=torch.bool))
    assert first.num_memory_rows == 0 and first.stream_kind[0] == ChunkLayout.SINK
