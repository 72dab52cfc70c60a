"""With its memory switched off, CoMeT is exactly the backbone (per chunk)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from cometlm import CometConfig, CometForCausalLM
from conftest import random_ids, tiny_backbone

NO_MEMORY = dict(global_slots=0, temp_stride=0)


@torch.no_grad()
def test_memory_off_one_chunk_equals_backbone(family):
    backbone = tiny_backbone(family)
    ids = random_ids(2, 21)
    comet = CometForCausalLM.from_backbone(backbone, CometConfig(chunk_size=32, **NO_MEMORY))
    torch.testing.assert_close(comet(ids).logits, backbone(ids).logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(comet(ids, labels=ids).loss, backbone(ids, labels=ids).loss, atol=1e-5, rtol=0)


@torch.no_grad()
def test_memory_off_several_chunks_equal_backbone_on_each_chunk(family):
    backbone = tiny_backbone(family)
    ids = random_ids(2, 29)
    comet = CometForCausalLM.from_backbone(backbone, CometConfig(chunk_size=8, **NO_MEMORY))
    logits = comet(ids).logits
    for start in range(0, 29, 8):
        alone = backbone(ids[:, start : start + 8]).logits
        torch.testing.assert_close(logits[:, start : start + 8], alone, atol=1e-5, rtol=0)


@torch.no_grad()
def test_untrained_memory_leaves_the_backbone_weights_alone():
    backbone = tiny_backbone("llama")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    CometForCausalLM.from_backbone(backbone, CometConfig(chunk_size=8, global_slots=2, temp_stride=4, temp_capacity=4))
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_unsupported_architecture_names_the_supported_ones():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="supported families are llama, mistral, qwen2, qwen3"):
        CometForCausalLM.from_backbone(gpt2, CometConfig())


def test_initialisation_is_reproducible():
    """CoMeT's initial parameters depend on init_seed only, not on the global RNG."""
    config = CometConfig(chunk_size=8, global_slots=2, temp_stride=4, temp_capacity=4, init_seed=7)
    backbones = [tiny_backbone() for _ in range(2)]
    models = []
    for global_seed, backbone in zip((1, 2), backbones):
        torch.manual_seed(global_seed)
        models.append(CometForCausalLM.from_backbone(backbone, config))
    for x, y in zip(models[0].memory.state_dict().values(), models[1].memory.state_dict().values()):
        assert torch.equal(x, y)
