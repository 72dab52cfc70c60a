"""Gradients really flow through the memories across chunks, and the ablation switches cut their paths."""

import pytest
import torch

from cometlm import CometConfig, CometForCausalLM, LayerState
from cometlm.generation import open_chunk
from cometlm.memory import GlobalMemory
from conftest import random_ids, randomize_memory, tiny_backbone

C = 8
ABLATIONS = {
    "both": dict(global_slots=3, temp_stride=4, temp_capacity=4),  # queue reach: one chunk back
    "global_only": dict(global_slots=3, temp_stride=0),
    "temp_only": dict(global_slots=0, temp_stride=4, temp_capacity=4),
    "no_gate": dict(global_slots=3, temp_stride=4, temp_capacity=4, gate=False),
    "none": dict(global_slots=0, temp_stride=0),
}


def make(ablation):
    config = CometConfig(chunk_size=C, adapter_rank=4, **ABLATIONS[ablation])
    return randomize_memory(CometForCausalLM.from_backbone(tiny_backbone(), config))


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_chunk3_loss_reaches_layer0_memory_written_at_chunk1(ablation):
    comet = make(ablation)
    ids = random_ids(1, 4 * C)
    state = comet.ingest(ids[:, : 2 * C + 1])  # chunks 0 and 1 closed
    layer0 = state.layers[0]
    leaves = [t.detach().clone().requires_grad_(t.dtype.is_floating_point) for t in (
        layer0.global_memory, layer0.global_state, layer0.has_global, layer0.temp, layer0.temp_valid)]
    state = state.with_layers([LayerState(*leaves), *state.layers[1:]])
    state = comet.ingest(ids[:, 2 * C + 1 :], state, requires_grad=True)  # chunk 2 closed, chunk 3 open
    loss = open_chunk(comet, state).logits.logsumexp(-1).sum()
    loss.backward()
    g, s, _, t, _ = (leaf.grad for leaf in leaves)

    def nonzero(grad):
        return grad is not None and grad.numel() > 0 and bool(grad.abs().sum() > 0)

    config = comet.comet_config
    assert nonzero(g) == config.use_global
    assert nonzero(t) == config.use_temp
    # The gate is the only direct path from the old global state to the new one.
    assert nonzero(s) == (config.use_global and config.gate)


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_no_path_across_chunks_without_memory(ablation):
    comet = make(ablation)
    ids = random_ids(1, 4 * C)
    embedded = []
    hook = comet.backbone.embed_tokens.register_forward_hook(lambda m, i, out: embedded.append(out) or out.retain_grad())
    labels = torch.full_like(ids, -100)
    labels[:, 3 * C :] = ids[:, 3 * C :]
    comet(ids, labels=labels).loss.backward()
    hook.remove()
    chunk1 = embedded[1].grad
    crosses = comet.comet_config.use_global or comet.comet_config.use_temp
    assert bool(chunk1.abs().sum() > 0) == crosses
    if crosses:
        for name, p in comet.memory.layers[0].named_parameters():
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_gate_switch_decides_whether_the_old_state_survives():
    torch.manual_seed(0)
    candidates, old = torch.randn(2, 3, 16), torch.randn(2, 3, 16, requires_grad=True)
    has_state = torch.tensor([True, True])
    gated, plain = GlobalMemory(16, 4, 1e-6, gated=True), GlobalMemory(16, 4, 1e-6, gated=False)
    gated_grad = torch.autograd.grad(gated.next_state(candidates, old, has_state).sum(), old, allow_unused=True)[0]
    plain_grad = torch.autograd.grad(plain.next_state(candidates, old, has_state).sum(), old, allow_unused=True)[0]
    assert gated_grad is not None and bool(gated_grad.abs().sum() > 0)
    assert plain_grad is None
    first = gated.next_state(candidates, old, torch.tensor([False, False]))
    torch.testing.assert_close(first, gated.norm(candidates))  # t == 0: the state is the candidate


def test_a_centred_gate_is_the_papers_gate_on_its_input_less_the_center():
    """g = sigmoid(W ([cand ; S] - c) + b): the state and every gradient as that formula gives them, computed
    directly; with c = 0 exactly the uncentred gate."""
    torch.manual_seed(0)
    d = 16
    candidates, old = torch.randn(2, 3, d), torch.randn(2, 3, d)
    has_state = torch.tensor([True, False])
    plain, centred = GlobalMemory(d, 4, 1e-6, gated=True), GlobalMemory(d, 4, 1e-6, gated=True, centered=True)
    centred.load_state_dict(plain.state_dict() | {"gate_center": torch.zeros(2 * d)})
    assert torch.equal(centred.next_state(candidates, old, has_state), plain.next_state(candidates, old, has_state))
    with torch.no_grad():
        centred.gate_center.copy_(torch.randn(2 * d) * 3)
    state = old.clone().requires_grad_()
    new = centred.next_state(candidates, state, has_state)
    grads = torch.autograd.grad(new.square().sum(), [state, centred.gate.weight, centred.gate.bias])
    reference = old.clone().requires_grad_()
    weight = centred.gate.weight.detach().clone().requires_grad_()
    bias = centred.gate.bias.detach().clone().requires_grad_()
    cand = centred.norm(candidates)
    g = torch.sigmoid((torch.cat([cand, reference], dim=-1) - centred.gate_center) @ weight.T + bias)
    expected = torch.where(has_state[:, None, None], g * reference + (1 - g) * cand, cand)
    torch.testing.assert_close(new, expected)
    for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), [reference, weight, bias])):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(new, plain.next_state(candidates, old, has_state))  # the center matters
    assert "gate_center" not in plain.state_dict() and "gate_center" in centred.state_dict()


def test_checkpointing_gives_the_same_loss_and_gradients():
    ids = random_ids(2, 3 * C + 3)
    results = []
    for checkpointing in (False, True):
        comet = make("both")
        if checkpointing:
            comet.gradient_checkpointing_enable()
        loss = comet(ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in comet.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for name in results[0][1]:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], atol=1e-6, rtol=1e-5)


def test_a_loss_on_the_returned_logits_has_the_gradient_of_the_same_loss_computed_chunk_by_chunk():
    """``forward`` writes each chunk's logits into the (B, N, V) tensor it returns; a loss taken on that tensor
    trains the model exactly as the loss ``forward`` computes itself (padding rows of a shorter stream included)."""
    comet = make("both")
    ids = random_ids(2, 3 * C + 5)
    mask = torch.ones_like(ids)
    mask[1, 2 * C + 1 :] = 0  # a shorter second stream: its chunks end earlier
    labels = ids.masked_fill(mask == 0, -100)
    params = [p for p in comet.parameters() if p.requires_grad]

    def gradients(from_logits: bool):
        comet.zero_grad(set_to_none=True)
        out = comet(ids, attention_mask=mask, labels=labels, return_logits=from_logits)
        if from_logits:
            loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                     ignore_index=-100)
        else:
            loss = out.loss
        loss.backward()
        return loss.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    loss, want = gradients(False)
    loss_from_logits, got = gradients(True)
    torch.testing.assert_close(loss_from_logits, loss)
    assert any(bool(g.abs().sum() > 0) for g in want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
