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


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_memory_rows_run_as_a_prefix_of_keys_and_values_give_what_the_whole_sequence_gives(name):
    """Training runs each layer's memory rows apart, as keys and values before the stream rows' own (the prefix
    form, chosen when gradients are on); reading runs them in one sequence with the stream rows. Both give the same
    outputs, memories and gradients (into the memory rows, the memory modules and the learned tokens)."""
    model = tiny_comet(config=dataclasses.replace(SMALL, **CONFIGS[name]))
    cell, c = model.cell, SMALL.chunk_size
    with torch.no_grad():
        state = model.ingest(random_ids(2, 3 * c + 1, seed=4), attention_mask=torch.tensor(
            [[1] * (3 * c + 1), [1] * (2 * c + 1) + [0] * c]))
    ids, text_len, closing = random_ids(2, c, seed=5), torch.tensor([c, 5]), torch.tensor([True, False])
    results = []
    for prefix in (False, True):
        layers = tuple(dataclasses.replace(layer, temp=layer.temp.clone().requires_grad_(),
                                           global_memory=layer.global_memory.clone().requires_grad_())
                       for layer in state.layers)
        start = dataclasses.replace(state, layers=layers)
        model.zero_grad(set_to_none=True)
        inputs = cell.start(ids, text_len, closing, start.layers[0].row_valid(), prefix=prefix)
        assert inputs.prefix == prefix
        hidden, after = inputs.hidden, []
        for index, layer in enumerate(start.layers):
            hidden, layer = cell.layer(index, hidden, layer, inputs)
            after.append(layer)
        text = cell.end(hidden, inputs)
        loss = text.pow(2).mean() + sum(layer.temp.pow(2).mean() + layer.global_state.pow(2).mean() for layer in after)
        loss.backward()
        grads = [p.grad for p in model.memory.parameters()] + [t.grad for layer in layers
                                                                 for t in (layer.temp, layer.global_memory)]
        results.append((text.detach(), [layer.temp.detach() for layer in after], grads))
    (text_a, temp_a, grads_a), (text_b, temp_b, grads_b) = results
    torch.testing.assert_close(text_b, text_a, atol=1e-5, rtol=1e-4)
    for a, b in zip(temp_a, temp_b):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads_a[-2:])  # the memory rows get gradients
    for a, b in zip(grads_a, grads_b):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert not cell.start(ids, text_len, closing, state.layers[0].row_valid()).prefix
    assert cell.start(ids, text_len, closing, state.layers[0].row_valid()).prefix
