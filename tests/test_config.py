import pytest

from cometlm import CometConfig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(chunk_size=500, temp_stride=8), "chunk_size must be a multiple of temp_stride"),
        (dict(chunk_size=0), "chunk_size must be at least 1"),
        (dict(global_slots=-1), "global_slots must be >= 0"),
        (dict(temp_stride=-2), "temp_stride must be >= 0"),
        (dict(temp_capacity=0), "temp_capacity must be >= 1"),
        (dict(adapter_rank=0), "adapter_rank must be >= 1"),
        (dict(global_slots=0, gate=False), "gate=False"),
        (dict(temp_stride=0, temp_capacity=32), "temp_capacity has no effect"),
        (dict(chunk_size=64.0), "chunk_size must be an int"),
        (dict(gate="yes"), "gate must be True or False"),
        (dict(gate_bias=(1.0,)), "gate_bias must be None or"),
        (dict(gate_bias=(0, 4), gate=False), "gate_bias needs the gated global memory"),
        (dict(gate_centered=1), "gate_centered must be True or False"),
        (dict(gate_centered=True, global_slots=0, gate=False), "gate_centered needs the gated global memory"),
    ],
)
def test_invalid_combinations_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CometConfig(**kwargs)


def test_ablation_switches_are_valid():
    both_off = CometConfig(global_slots=0, temp_stride=0)
    assert not both_off.use_global and not both_off.use_temp and both_off.queue_size == 0
    assert CometConfig(gate=False).use_global
    assert CometConfig(global_slots=0, adapter_rank=0, temp_stride=0).max_positions == 1024


def test_round_trip_and_unknown_fields():
    config = CometConfig(chunk_size=64, global_slots=4, temp_stride=8, temp_capacity=16)
    assert CometConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown CometConfig fields"):
        CometConfig.from_dict({"chunk_size": 8, "chunk": 3})


def test_gate_bias_survives_json_and_sets_each_layer():
    import json

    import torch

    from conftest import tiny_backbone

    from cometlm import CometForCausalLM

    config = CometConfig(chunk_size=16, global_slots=2, temp_capacity=4, gate_bias=[0, 6])
    assert config.gate_bias == (0.0, 6.0)
    assert CometConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = CometForCausalLM.from_backbone(tiny_backbone(), config)
    biases = torch.cat([layer.global_memory.gate.bias for layer in model.memory.layers])
    layers = len(model.memory.layers)
    assert torch.allclose(biases, torch.linspace(0, 6, layers))
