"""The few-rows linear kernel (src/cometlm/linear.py): the same products as ``F.linear``, only computed another way."""

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cometlm.linear
from cometlm.linear import FEW_ROWS, FewRowsLinear, few_rows_pays, prepare_linears
from conftest import random_ids, tiny_backbone, tiny_comet


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
