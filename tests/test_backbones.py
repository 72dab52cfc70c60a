"""Family-specific properties: what one family does that the others do not (the shared properties are the
family-parametrized tests elsewhere), and the families CoMeT refuses, with their reasons."""

import pytest
import torch
from torch import nn
from transformers import Gemma3Config, Gemma3ForCausalLM, Gemma3TextConfig

from cometlm import SUPPORTED_FAMILIES, CometConfig, CometForCausalLM
from cometlm.lora import apply_lora
from conftest import COMMON, FAMILIES, GEMMA, SMALL, random_ids, tiny_backbone, tiny_comet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_family_of_the_tests_is_supported_and_every_supported_family_is_tested():
    from conftest import FAMILIES

    assert set(FAMILIES) == set(SUPPORTED_FAMILIES)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_learned_tokens_start_at_the_scale_of_the_embeddings_the_first_layer_sees(family):
    """Gemma's embedding module multiplies rows by sqrt(d): a beacon taken from the raw table would be ~6x too small
    here (sqrt(32)), and ~50x on a real Gemma."""
    model = tiny_comet(family)
    quiet = torch.tensor([model.config.eos_token_id])  # no tokenizer: the quiet token is EOS
    with torch.no_grad():
        want = model.backbone.embed(quiet)[0]
    torch.testing.assert_close(model.memory.tokens.beacon[0], want)
    assert not torch.allclose(want, model.backbone.embed_tokens.weight[quiet[0]])


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
@torch.no_grad()
def test_rows_that_are_only_keys_skip_the_row_wise_modules_without_changing_the_rows_used(family, lora):
    """Memory rows are keys and values for the rows after them: the family's query projection, output projection
    and MLP run on the used rows alone, and those rows come out as when every row runs everything."""
    model = tiny_comet(family)
    if lora:
        apply_lora(model, rank=2, targets=model.backbone.lora_targets)
        for p in model.backbone_model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)  # a LoRA that is not the zero update
    backbone = model.backbone
    torch.manual_seed(1)
    hidden = torch.randn(2, 12, backbone.hidden_size) * backbone.embedding_spread()
    inputs = backbone.layer_inputs(hidden, torch.arange(12)[None].expand(2, -1), None)
    assert len(backbone.row_modules(0)) == (2 if family == "phi3" else 3)  # phi3's queries share a fused projection
    for keys in (slice(0, 5), slice(2, 7)):  # the memory rows first, or after a sink row
        used = torch.tensor([i for i in range(12) if not keys.start <= i < keys.stop])
        for index in range(backbone.num_layers):
            every_row = backbone.run_layer(index, hidden, inputs)
            skipping = backbone.run_layer(index, hidden, inputs, key_rows=keys)
            torch.testing.assert_close(skipping[:, used], every_row[:, used])


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
@torch.no_grad()
def test_rows_that_are_only_keys_can_run_apart_as_a_prefix_of_keys_and_values(family, lora):
    """The keys and values a layer makes of some rows, taken where its attention hands them to a cache
    (``key_values``), then put before the other rows' own (``run_layer``'s ``prefix``), give the other rows what the
    whole sequence gives them: the family's norms, fused projections and rotary embedding are its own code's."""
    model = tiny_comet(family)
    if lora:
        apply_lora(model, rank=2, targets=model.backbone.lora_targets)
        for p in model.backbone_model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    backbone = model.backbone
    torch.manual_seed(2)
    hidden = torch.randn(2, 12, backbone.hidden_size) * backbone.embedding_spread()
    positions = torch.arange(12)[None].expand(2, -1)
    whole = backbone.layer_inputs(hidden, positions, None)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    for keys in (slice(0, 5), slice(2, 7)):  # the memory rows first, or after a sink row that must not see them
        block = torch.arange(keys.start, keys.stop)
        used = torch.tensor([i for i in range(12) if not keys.start <= i < keys.stop])
        order = torch.cat([block, used])
        mask = causal[used][:, order][None, None]
        key_inputs = backbone.layer_inputs(hidden[:, block], positions[:, block], None)
        used_inputs = backbone.layer_inputs(hidden[:, used], positions[:, used], mask, positions[:, order])
        for index in range(backbone.num_layers):
            every_row = backbone.run_layer(index, hidden, whole)
            prefix = backbone.key_values(index, hidden[:, block], key_inputs)
            assert prefix[0].shape[-2] == prefix[1].shape[-2] == len(block)
            apart = backbone.run_layer(index, hidden[:, used], used_inputs, prefix=prefix)
            torch.testing.assert_close(apart, every_row[:, used])


@pytest.mark.parametrize("batch", [1, 3])
@torch.no_grad()
def test_the_rows_a_cut_module_runs_on_are_laid_out_as_a_tensor_of_their_own(batch):
    """A row-wise module gets its rows with the strides of a fresh tensor, whether the cut block comes first (a slice
    of its input) or after a sink row (a concatenation): PyTorch's bfloat16 CPU products are about 3x slower on a
    slice that keeps its parent's strides (docs/EXPERIMENTS.md, session 32)."""
    backbone = tiny_comet("llama").backbone
    hidden = torch.randn(batch, 12, backbone.hidden_size)
    inputs = backbone.layer_inputs(hidden, torch.arange(12)[None].expand(batch, -1), None)
    seen = []
    # a forward hook sees the input the module ran on, after the cut's own pre-hook
    handles = [m.register_forward_hook(lambda _, args, out: seen.append(args[0])) for m in backbone.row_modules(0)]
    try:
        for keys in (slice(0, 5), slice(1, 6)):
            backbone.run_layer(0, hidden, inputs, key_rows=keys)
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == 6
    for x in seen:
        assert x.shape[:2] == (batch, 7)
        assert x.stride() == torch.empty(x.shape).stride() and x.storage_offset() in (0, 5 * x.shape[-1])


@torch.no_grad()
def test_a_window_shorter_than_the_chunk_sequence_hides_keys_beyond_it():
    """Layer 0 of the tiny Gemma 2 slides (window 6), layer 1 does not: the masks say so, by position."""
    backbone = tiny_comet("gemma2").backbone
    assert backbone.layer_types == ("sliding_attention", "full_attention")
    positions = torch.arange(10)[None]
    inputs = backbone.layer_inputs(torch.zeros(1, 10, 32), positions, None)
    sliding, full = (inputs.masks[t][0, 0] == 0 for t in ("sliding_attention", "full_attention"))  # eager: additive
    q, k = torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij")
    assert torch.equal(full, k <= q) and torch.equal(sliding, (k <= q) & (q - k < 6))


def test_phi3_takes_lora_on_its_fused_qkv_projection_and_names_it_when_asked_for_q_proj():
    model = tiny_comet("phi3")
    with pytest.raises(ValueError, match=r"phi3 model has .*qkv_proj.*usual targets: qkv_proj"):
        apply_lora(tiny_comet("phi3"), targets=("q_proj", "v_proj"))
    ids = random_ids(2, 13)
    with torch.no_grad():
        before = model(ids).logits
    apply_lora(model, rank=2, targets=model.backbone.lora_targets)
    lora = {n: p for n, p in model.backbone_model.named_parameters() if p.requires_grad}
    assert lora and all("qkv_proj.lora_" in n for n in lora)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before)  # LoRA starts as a zero update
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in lora.items() if "lora_A" in n)


def test_multimodal_gemma3_is_refused_with_the_text_model_named():
    wrapper = nn.Module()
    wrapper.config = Gemma3Config()
    with pytest.raises(ValueError, match="multimodal Gemma3ForConditionalGeneration.*Gemma3ForCausalLM"):
        CometForCausalLM.from_backbone(wrapper, SMALL)


def test_bidirectional_gemma3_is_refused_because_chunks_need_causal_attention():
    config = Gemma3TextConfig(**COMMON, **GEMMA, use_bidirectional_attention=True)
    with pytest.raises(ValueError, match="bidirectional attention.*causal attention"):
        CometForCausalLM.from_backbone(Gemma3ForCausalLM(config), SMALL)


def test_attention_soft_capping_runs_eager_even_if_the_model_came_with_another_kernel():
    backbone = tiny_backbone("gemma2")
    backbone.config._attn_implementation = "flex_attention"  # as if loaded so; CoMeT cannot pass its masks there
    comet = CometForCausalLM.from_backbone(backbone, CometConfig(chunk_size=8, global_slots=0, temp_stride=0))
    assert comet.config._attn_implementation == "eager"
