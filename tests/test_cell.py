"""The per-chunk step: a chunk run whole (every layer's memory update in one batch after the last layer) gives the
memories that running it layer by layer gives (each layer updated right after it, as the parallel schedule and
generation's roll-over do)."""

import dataclasses

import pytest
import torch

from cometlm.state import MemoryState
from conftest import SMALL, assert_states_equal, random_ids, tiny_comet

CONFIGS = {"both": {}, "sink": dict(attention_sink=True), "no gate": dict(gate=False), "global only":
           dict(temp_stride=0, temp_capacity=0), "temporary only": dict(global_slots=0)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@torch.no_grad()
def test_a_chunk_run_whole_equals_it_run_layer_by_layer(name):
    model = tiny_comet(config=dataclasses.replace(SMALL, **CONFIGS[name]))
    cell, c = model.cell, SMALL.chunk_size
    # Two streams with memories of different ages (one has read a chunk more); only the first closes this chunk.
    state = model.ingest(random_ids(2, 3 * c + 1, seed=4), attention_mask=torch.tensor([[1] * (3 * c + 1),
                                                                                          [1] * (2 * c + 1) + [0] * c]))
    ids, text_len, closing = random_ids(2, c, seed=5), torch.tensor([c, 5]), torch.tensor([True, False])
    whole = cell.run(state, ids, text_len, closing)
    inputs = cell.start(ids, text_len, closing, state.layers[0].row_valid())
    hidden, layers = inputs.hidden, []
    for index, layer in enumerate(state.layers):
        hidden, layer = cell.layer(index, hidden, layer, inputs)
        layers.append(layer)
    stepped = MemoryState(state.config, tuple(layers), state.pending, state.pending_len,
                          state.chunks_closed + closing.long())
    assert_states_equal(whole.state, stepped, atol=1e-6)
    torch.testing.assert_close(whole.text_hidden, cell.end(hidden, inputs), atol=1e-6, rtol=0)
    assert not torch.equal(whole.state.layers[0].temp[0], state.layers[0].temp[0]) or not model.comet_config.use_temp
    assert torch.equal(whole.state.layers[0].temp[1], state.layers[0].temp[1])  # the stream that did not close
