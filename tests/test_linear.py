"""The CPU linear kernels (src/cometlm/linear.py): the same products as ``F.linear``, only computed another way."""

import copy
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cometlm.linear
from cometlm.linear import (FEW_ROWS, FewRowsLinear, PackedLinear, few_rows_pays, packing_available, packing_pays,
                            prepare_linears)
from cometlm.model import CometForCausalLM
from conftest import SMALL, random_ids, randomize_memory, tiny_backbone, tiny_comet

needs_packing = pytest.mark.skipif(not packing_available(), reason="this PyTorch build cannot pack bfloat16 weights")


@pytest.fixture(autouse=True)
def _kernels_by_measurement(monkeypatch):
    """Models prepare their linears as a user's would by default, whatever COMETLM_LINEAR_KERNEL the shell sets."""
    monkeypatch.delenv("COMETLM_LINEAR_KERNEL", raising=False)


def _layer(in_features, out_features, bias, dtype=torch.float32):
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features, bias=bias).to(dtype)
    prepare_linears(layer, kernel="few-rows")
    assert type(layer) is FewRowsLinear
    return layer


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1), (1, 3), (4,), (2, 2), (1, 6), (3, 5, 2)])
def test_few_rows_equal_f_linear(shape, bias):
    layer = _layer(48, 80, bias)
    x = torch.randn(*shape, 48)
    with torch.inference_mode():
        got = layer(x)
    want = F.linear(x, layer.weight, layer.bias)
    assert got.shape == want.shape and got.dtype == want.dtype and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_non_contiguous_input_gives_the_same_product():
    layer = _layer(32, 16, bias=True)
    x = torch.randn(32, 3).T  # (3, 32), column-major
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_training_bfloat16_and_many_rows_are_f_linear_exactly():
    layer = _layer(32, 16, bias=True)
    x = torch.randn(2, 32, requires_grad=True)
    out = layer(x)  # grad enabled: F.linear itself, so gradients are what they always were
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    with torch.inference_mode():
        many = torch.randn(FEW_ROWS + 1, 32)
        assert torch.equal(layer(many), F.linear(many, layer.weight, layer.bias))
        half = _layer(32, 16, bias=False, dtype=torch.bfloat16)
        y = torch.randn(2, 32, dtype=torch.bfloat16)
        assert torch.equal(half(y), F.linear(y, half.weight))


def test_prepare_linears_keeps_weights_names_and_lora():
    backbone = tiny_backbone()
    names = list(backbone.state_dict())
    weights = {name: p.data_ptr() for name, p in backbone.named_parameters()}
    plain = sum(type(m) is nn.Linear for m in backbone.modules())
    assert plain and prepare_linears(backbone, kernel="few-rows") == plain
    assert not any(type(m) is nn.Linear for m in backbone.modules())
    assert list(backbone.state_dict()) == names
    assert {name: p.data_ptr() for name, p in backbone.named_parameters()} == weights
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=2, target_modules=["q_proj"]), backbone)
    assert any("lora_A" in name for name, _ in backbone.named_parameters())


def test_auto_follows_the_measurement_and_linear_changes_nothing(monkeypatch):
    for pays, kind in ((True, FewRowsLinear), (False, nn.Linear)):
        monkeypatch.setattr(cometlm.linear, "few_rows_pays", lambda linears, pays=pays: pays)
        backbone = tiny_backbone()
        plain = sum(type(m) is nn.Linear for m in backbone.modules())
        assert prepare_linears(backbone) == (plain if pays else 0)
        assert {type(m) for m in backbone.modules() if isinstance(m, nn.Linear)} == {kind}
    backbone = tiny_backbone()
    assert prepare_linears(backbone, kernel="linear") == 0
    assert {type(m) for m in backbone.modules() if isinstance(m, nn.Linear)} == {nn.Linear}
    with pytest.raises(ValueError, match="kernel must be one of"):
        prepare_linears(backbone, kernel="fast")


def test_the_measurement_is_made_once_and_only_on_float32_cpu_layers(monkeypatch):
    calls, clock = [], time.perf_counter
    monkeypatch.setattr(cometlm.linear.time, "perf_counter", lambda: calls.append(1) or clock())
    half = [nn.Linear(24, 40).to(torch.bfloat16)]
    assert few_rows_pays(half) is False and not calls  # nothing to time: F.linear is what bfloat16 runs anyway
    layers = [nn.Linear(23, 37), nn.Linear(37, 23)]
    first = few_rows_pays(layers)
    timed = len(calls)
    assert timed > 0 and isinstance(first, bool)
    assert few_rows_pays([nn.Linear(23, 37), nn.Linear(37, 23)]) is first and len(calls) == timed  # remembered


@pytest.mark.parametrize("pays", [True, False])
def test_a_comet_model_decodes_the_same_tokens_with_either_kernel(monkeypatch, pays):
    monkeypatch.setattr(cometlm.linear, "few_rows_pays", lambda linears: pays)
    model = tiny_comet()
    kinds = {type(m) for m in model.backbone_model.modules() if isinstance(m, nn.Linear)}
    assert kinds == {FewRowsLinear if pays else nn.Linear}
    monkeypatch.setattr(cometlm.linear, "few_rows_pays", lambda linears: False)
    plain = tiny_comet()
    prompt = random_ids(1, 21, seed=3)
    with torch.inference_mode():
        got = model.generate(prompt, max_new_tokens=12, return_dict_in_generate=True, output_logits=True)
        want = plain.generate(prompt, max_new_tokens=12, return_dict_in_generate=True, output_logits=True)
    assert torch.equal(got.sequences, want.sequences) and len(got.logits) == 12
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _packed_layer(in_features, out_features, bias):
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features, bias=bias).to(torch.bfloat16)
    prepare_linears(layer, kernel="packed")
    assert type(layer) is PackedLinear
    return layer


@needs_packing
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1,), (1, 1), (2, 3), (1, 161), (2, 5, 7), (0, 4)])
def test_packed_equals_f_linear_in_bfloat16(shape, bias):
    layer = _packed_layer(96, 80, bias)
    x = torch.randn(*shape, 96, dtype=torch.bfloat16)
    with torch.inference_mode():
        got = layer(x)
    want = F.linear(x, layer.weight, layer.bias)
    assert layer in cometlm.linear._packed  # the packed product ran
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want)  # bfloat16's tolerances: the order of the sums may round differently


@needs_packing
def test_packed_follows_its_weight_when_it_changes_in_place():
    layer = _packed_layer(32, 16, bias=False)
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(-2)  # as a LoRA merge or load_state_dict changes it: the packed copy must not be stale
    with torch.inference_mode():
        after = layer(x)
    torch.testing.assert_close(after, F.linear(x, layer.weight))
    torch.testing.assert_close(after, -2 * before)


@needs_packing
def test_packed_runs_f_linear_exactly_where_it_does_not_apply():
    layer = _packed_layer(32, 16, bias=True)
    x = torch.randn(2, 32, dtype=torch.bfloat16, requires_grad=True)
    out = layer(x)  # gradients on: F.linear itself
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    out.float().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    with torch.inference_mode():
        strided = torch.randn(32, 3, dtype=torch.bfloat16).T
        assert torch.equal(layer(strided), F.linear(strided, layer.weight, layer.bias))
        full = layer.float()
        y = torch.randn(2, 32)
        assert torch.equal(full(y), F.linear(y, full.weight, full.bias))


@needs_packing
def test_a_model_with_packed_weights_can_still_be_copied():
    model = nn.Sequential(nn.Linear(16, 8, bias=False)).to(torch.bfloat16)
    prepare_linears(model, kernel="packed")
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    with torch.inference_mode():
        want = model(x)  # packs the weight
    twin = copy.deepcopy(model)
    with torch.inference_mode():
        assert torch.equal(twin(x), want)
        made_here = copy.deepcopy(model)  # weights made under inference mode: F.linear (nothing says they changed)
        assert torch.equal(made_here(x), F.linear(x, made_here[0].weight))
    assert made_here[0] not in cometlm.linear._packed


def test_auto_packs_bfloat16_layers_where_it_pays(monkeypatch):
    for pays in (True, False):
        monkeypatch.setattr(cometlm.linear, "packing_pays", lambda linears, pays=pays: pays)
        monkeypatch.setattr(cometlm.linear, "few_rows_pays", lambda linears: True)
        backbone = tiny_backbone().to(torch.bfloat16)
        plain = sum(type(m) is nn.Linear for m in backbone.modules())
        assert prepare_linears(backbone) == (plain if pays else 0)
        kinds = {type(m) for m in backbone.modules() if isinstance(m, nn.Linear)}
        assert kinds == {PackedLinear if pays else nn.Linear}


def test_the_packing_measurement_times_only_bfloat16_cpu_layers_and_keeps_no_packed_weight(monkeypatch):
    calls, clock = [], time.perf_counter
    monkeypatch.setattr(cometlm.linear.time, "perf_counter", lambda: calls.append(1) or clock())
    assert packing_pays([nn.Linear(24, 40)]) is False and not calls  # float32: nothing to time
    layers = [nn.Linear(24, 40).to(torch.bfloat16), nn.Linear(40, 24).to(torch.bfloat16)]
    decision = packing_pays(layers)
    assert isinstance(decision, bool) and (len(calls) > 0) == packing_available()
    assert not any(layer in cometlm.linear._packed for layer in layers)


@needs_packing
def test_a_bfloat16_comet_model_reads_and_decodes_the_same_with_packed_weights(monkeypatch):
    def model(kernel):  # the kernel the model's own preparation takes (not the load's measurement)
        monkeypatch.setenv("COMETLM_LINEAR_KERNEL", kernel)
        return randomize_memory(CometForCausalLM.from_backbone(tiny_backbone().to(torch.bfloat16), SMALL)).eval()

    packed, plain = model("packed"), model("linear")
    assert any(type(m) is PackedLinear for m in packed.backbone_model.modules())
    assert not any(type(m) is PackedLinear for m in plain.backbone_model.modules())
    prompt = random_ids(1, 45, seed=4)
    with torch.inference_mode():
        got = packed.generate(prompt, max_new_tokens=10, return_dict_in_generate=True, output_logits=True)
        want = plain.generate(prompt, max_new_tokens=10, return_dict_in_generate=True, output_logits=True)
    assert sum(m in cometlm.linear._packed for m in packed.backbone_model.modules()) > 0
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_the_environment_chooses_the_kernel_or_says_what_it_takes(monkeypatch):
    monkeypatch.setenv("COMETLM_LINEAR_KERNEL", "linear")
    model = CometForCausalLM.from_backbone(tiny_backbone(), SMALL)
    assert {type(m) for m in model.backbone_model.modules() if isinstance(m, nn.Linear)} == {nn.Linear}
    monkeypatch.setenv("COMETLM_LINEAR_KERNEL", "packed")
    if packing_available():
        model = CometForCausalLM.from_backbone(tiny_backbone(), SMALL)
        assert PackedLinear in {type(m) for m in model.backbone_model.modules()}
    else:
        with pytest.raises(ValueError, match="cannot pack bfloat16 weights"):
            CometForCausalLM.from_backbone(tiny_backbone(), SMALL)
    monkeypatch.setattr(cometlm.linear, "packing_available", lambda: False)
    with pytest.raises(ValueError, match="cannot pack bfloat16 weights"):
        prepare_linears(nn.Linear(4, 4), kernel="packed")
    monkeypatch.setenv("COMETLM_LINEAR_KERNEL", "fastest")
    with pytest.raises(ValueError, match="COMETLM_LINEAR_KERNEL must be one of auto, few-rows, packed, linear"):
        CometForCausalLM.from_backbone(tiny_backbone(), SMALL)
