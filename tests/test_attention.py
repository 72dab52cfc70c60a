"""The attention kernel CoMeT switches sdpa backbones to (attention.KERNEL): on a CPU, grouped keys and values are
read in place; what comes out is what transformers' own sdpa gives, bit for bit."""

import pytest
import torch
from conftest import SMALL, random_ids, randomize_memory, tiny_backbone
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from cometlm import CometForCausalLM
from cometlm.attention import KERNEL, PAD_ROWS, cpu_gqa_sdpa


class Grouped(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


@pytest.mark.parametrize("q, k", [(2, 141), (7, 7), (33, 60)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_equals_transformers_sdpa_bit_for_bit(q, k, dtype):
    generator = torch.Generator().manual_seed(q * k)
    query = torch.randn(2, 9, q, 16, generator=generator).to(dtype)
    key, value = (torch.randn(2, 3, k, 16, generator=generator).to(dtype) for _ in range(2))
    mask = torch.rand(2, 1, q, k, generator=generator) > 0.3
    mask[..., 0] = True
    for m in (mask, None) if q == k else (mask,):
        ours, _ = cpu_gqa_sdpa(Grouped(), query, key, value, m, scaling=0.25)
        theirs, _ = sdpa_attention_forward(Grouped(), query, key, value, m, scaling=0.25)
        assert ours.shape == (2, q, 9, 16)
        if dtype == torch.bfloat16 and q == k and q % PAD_ROWS:  # padded: the kernel's blocking rounds differently
            torch.testing.assert_close(ours.float(), theirs.float(), atol=2e-2, rtol=0)
        else:
            assert torch.equal(ours, theirs)


@pytest.mark.parametrize("causal", [True, False])
def test_padding_the_rows_changes_bfloat16_attention_only_by_rounding(monkeypatch, causal):
    """Self-attention in bfloat16 runs on rows padded to a multiple of PAD_ROWS; no real query may see a padded key,
    so the outputs are the unpadded ones up to rounding, and closer to float32 than bfloat16's own step."""
    import cometlm.attention as attention

    generator = torch.Generator().manual_seed(5)
    query = torch.randn(1, 9, 37, 16, generator=generator)
    key, value = (torch.randn(1, 3, 37, 16, generator=generator) for _ in range(2))
    mask = None if causal else torch.rand(1, 1, 37, 37, generator=generator) > 0.5
    if mask is not None:
        mask[..., 0] = True
    exact, _ = cpu_gqa_sdpa(Grouped(), query, key, value, mask)  # float32: never padded
    low = [t.bfloat16() for t in (query, key, value)]
    padded, _ = cpu_gqa_sdpa(Grouped(), *low, mask)
    monkeypatch.setattr(attention, "PAD_ROWS", 1)
    plain, _ = cpu_gqa_sdpa(Grouped(), *low, mask)
    assert padded.shape == plain.shape == (1, 37, 9, 16)
    torch.testing.assert_close(padded.float(), exact, atol=2e-2, rtol=0)
    torch.testing.assert_close(padded.float(), plain.float(), atol=2e-2, rtol=0)


@pytest.mark.parametrize("masked", [True, False])
def test_with_gradients_low_precision_attention_runs_in_float32(masked):
    """Training: bfloat16 attention on a CPU is computed in float32 and rounded once (PyTorch's bfloat16 flash
    backward is the slower one); its outputs and input gradients are float32 attention's, rounded to bfloat16. Without
    gradients it stays in bfloat16, padded (the faster forward)."""
    generator = torch.Generator().manual_seed(7)
    query = torch.randn(2, 9, 37, 16, generator=generator).bfloat16()
    key, value = (torch.randn(2, 3, 37, 16, generator=generator).bfloat16() for _ in range(2))
    mask = torch.rand(2, 1, 37, 37, generator=generator) > 0.5 if masked else None
    if mask is not None:
        mask[..., 0] = True
    grad = torch.randn(2, 37, 9, 16, generator=generator).bfloat16()
    low = [t.clone().requires_grad_() for t in (query, key, value)]
    ours, _ = cpu_gqa_sdpa(Grouped(), *low, mask, scaling=0.25)
    ours.backward(grad)
    high = [t.float().requires_grad_() for t in (query, key, value)]
    want = torch.nn.functional.scaled_dot_product_attention(*high, attn_mask=mask, scale=0.25, is_causal=mask is None,
                                                            enable_gqa=True).transpose(1, 2)
    want.backward(grad.float())
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, want.bfloat16())
    for mine, theirs in zip(low, high):
        assert mine.grad.dtype == torch.bfloat16 and torch.equal(mine.grad, theirs.grad.bfloat16())
    with torch.no_grad():
        reading, _ = cpu_gqa_sdpa(Grouped(), query, key, value, mask, scaling=0.25)
    assert not torch.equal(reading, ours)  # 37 rows: bfloat16, padded to 48


def test_unmasked_queries_over_a_longer_cache_are_left_to_transformers():
    """sdpa's causal flag aligns to the upper left: without a mask and with more keys than queries, transformers
    crops the keys (its static-cache prefill); the kernel hands that case over instead of computing it wrong."""
    query, key = torch.randn(1, 9, 4, 16), torch.randn(1, 3, 10, 16)
    ours, _ = cpu_gqa_sdpa(Grouped(), query, key, key, None)
    theirs, _ = sdpa_attention_forward(Grouped(), query, key, key, None)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3_text"])
def test_comet_reads_and_generates_as_with_transformers_sdpa(family):
    ids = random_ids(2, 29, seed=3)
    ours = randomize_memory(CometForCausalLM.from_backbone(tiny_backbone(family), SMALL)).eval()
    assert ours.backbone_model.config._attn_implementation == KERNEL
    theirs = randomize_memory(CometForCausalLM.from_backbone(tiny_backbone(family), SMALL)).eval()
    theirs.backbone_model.set_attn_implementation("sdpa")
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)
        a = ours.generate(ids, max_new_tokens=12, do_sample=False)
        b = theirs.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(a, b)


def test_eager_chosen_by_the_user_stays():
    model = CometForCausalLM.from_backbone(tiny_backbone(attn="eager"), SMALL)
    assert model.backbone_model.config._attn_implementation == "eager"
