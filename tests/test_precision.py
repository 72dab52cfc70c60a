"""Mixed precision: a bfloat16 backbone with CoMeT's gate, blend and global state S in float32 (METHOD.md 3)."""

import torch

from cometlm.memory import GlobalMemory
from conftest import SMALL, random_ids, tiny_comet


def test_a_saturating_gate_still_writes_the_candidate_with_bfloat16_inputs():
    """In bfloat16, sigmoid(7) rounds to exactly 1 and the state would never change; in float32 it moves."""
    torch.manual_seed(0)
    memory = GlobalMemory(16, 4, 1e-6, gated=True)
    with torch.no_grad():
        memory.gate.weight.zero_()
        memory.gate.bias.fill_(7.0)
    readouts = torch.randn(1, 3, 16).to(torch.bfloat16)
    state = torch.randn(1, 3, 16)
    has = torch.ones(1, dtype=torch.bool)
    new = memory.next_state(readouts, state, has)
    assert new.dtype == torch.float32
    assert not torch.equal(new, state)
    g = torch.sigmoid(torch.tensor(7.0))
    candidate = torch.nn.functional.rms_norm(readouts.float(), (16,), memory.norm.weight, 1e-6)
    torch.testing.assert_close(new, g * state + (1 - g) * candidate)
    assert torch.sigmoid(torch.tensor(7.0, dtype=torch.bfloat16)) == 1  # what float32 avoids


@torch.inference_mode()
def test_a_bfloat16_model_keeps_S_and_its_own_weights_in_float32_and_stays_close_to_float32():
    fp32 = tiny_comet("llama", SMALL)
    bf16 = tiny_comet("llama", SMALL)
    bf16.backbone_model.to(torch.bfloat16)
    ids = random_ids(2, 40)
    a, b = fp32.ingest(ids), bf16.ingest(ids)
    assert all(layer.global_state.dtype == torch.float32 for layer in b.layers)
    assert all(layer.global_memory.dtype == torch.bfloat16 for layer in b.layers)
    assert {p.dtype for p in bf16.memory.parameters()} == {torch.float32}
    for x, y in zip(a.layers, b.layers):
        torch.testing.assert_close(y.global_state, x.global_state, atol=0.1, rtol=0.05)


def test_training_over_a_bfloat16_backbone_keeps_every_trainable_parameter_and_gradient_float32():
    from cometlm.lora import apply_lora

    model = tiny_comet("llama", SMALL)
    model.backbone_model.to(torch.bfloat16)
    apply_lora(model)
    ids = random_ids(2, 40)
    model(ids, labels=ids).loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)
    assert {p.dtype for p in model.backbone_model.parameters() if not p.requires_grad} == {torch.bfloat16}


@torch.inference_mode()
def test_bfloat16_reading_cuts_the_memory_rows_exactly_where_the_cpu_lacks_amx_and_reads_the_same(monkeypatch):
    import cometlm.cell as cell

    model = tiny_comet("llama", SMALL)
    model.backbone_model.to(torch.bfloat16)
    ids = random_ids(2, 40)
    decisions, states = [], []
    for amx in (True, False):
        monkeypatch.setattr(cell, "cpu_has_amx", lambda amx=amx: amx)
        policy = cell.MemoryCell.cuts_memory_rows
        seen = []
        recorded = staticmethod(lambda h: seen.append(policy(h)) or seen[-1])
        monkeypatch.setattr(cell.MemoryCell, "cuts_memory_rows", recorded)
        states.append(model.ingest(ids))
        decisions.append(set(seen))
        monkeypatch.undo()
    assert decisions == [{False}, {True}]  # every layer of every chunk: whole rows with AMX, cut rows without
    assert cell.MemoryCell.cuts_memory_rows(torch.zeros(1, 2, dtype=torch.float32))  # float32 always cuts
    for x, y in zip(*(s.layers for s in states)):
        torch.testing.assert_close(y.global_state, x.global_state, atol=0.05, rtol=0.02)
        torch.testing.assert_close(y.temp.float(), x.temp.float(), atol=0.05, rtol=0.02)
