"""Tiny random backbones of every supported family, built from configs (no downloads), and helpers."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from cometlm import CometConfig, CometForCausalLM
from cometlm.families import attention_implementation

VOCAB = 101
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention
    max_position_embeddings=1024,
)

SPECIAL_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # the defaults of some families exceed VOCAB
# Gemma: windows shorter than a chunk sequence (SMALL.max_positions is 21), so the windowed masks are exercised,
# and caps small enough to change tiny random scores and logits (at Gemma 2's own 50 and 30 they would change them
# by less than 1e-6, and a missing soft-cap would go unnoticed).
GEMMA = dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=6, final_logit_softcapping=0.3, **SPECIAL_IDS)

FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON, tie_word_embeddings=True)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**COMMON, tie_word_embeddings=False, sliding_window=512)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON, tie_word_embeddings=True)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=8, tie_word_embeddings=False)),  # q/k norms
    # Layer 0 slides, layer 1 attends in full; scaled embeddings, extra norms; attention soft-capping (eager only).
    "gemma2": lambda: Gemma2ForCausalLM(Gemma2Config(**COMMON, **GEMMA, attn_logit_softcapping=0.05)),
    # As Gemma 2 without attention soft-capping (as the released Gemma 3), plus q/k norms and local/global RoPE.
    "gemma3_text": lambda: Gemma3ForCausalLM(
        Gemma3TextConfig(**COMMON, **GEMMA, layer_types=["sliding_attention", "full_attention"])
    ),
    # Fused qkv_proj and gate_up_proj; a window shorter than a chunk sequence on every layer.
    "phi3": lambda: Phi3ForCausalLM(Phi3Config(**COMMON, **SPECIAL_IDS, sliding_window=10, tie_word_embeddings=False)),
    "olmo2": lambda: Olmo2ForCausalLM(Olmo2Config(**COMMON, **SPECIAL_IDS)),  # post-norms, q/k norms
}

SMALL = CometConfig(chunk_size=8, global_slots=3, temp_stride=4, temp_capacity=5, adapter_rank=4)


def tiny_backbone(family: str = "llama", seed: int = 0, attn: str = "sdpa"):
    torch.manual_seed(seed)
    model = FAMILIES[family]()
    if attention_implementation(model.config) == "eager":  # soft-capped attention is computed by eager alone
        attn = "eager"
    model.set_attn_implementation(attn)
    return model.eval()


def randomize_memory(model: CometForCausalLM, seed: int = 1, std: float = 0.2) -> CometForCausalLM:
    """An untrained CoMeT starts with identity adapters; random ones make every path carry signal."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.memory.named_parameters():
            if name.endswith("up.weight") or name.endswith("gate.weight"):
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def tiny_comet(family: str = "llama", config: CometConfig = SMALL, seed: int = 0, attn: str = "sdpa"):
    return randomize_memory(CometForCausalLM.from_backbone(tiny_backbone(family, seed, attn), config)).eval()


def random_ids(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def shipped_key_budget() -> int:
    """The most keys a text token of the shipped passkey adapter attends to (its memory rows, the sink, its chunk's
    text and beacons up to itself), from the layout of a full closing chunk: what the cache baselines are given."""
    import json

    from cometlm.bundled import SHIPPED_ADAPTER
    from cometlm.layout import ChunkLayout

    sizes = json.loads((SHIPPED_ADAPTER / "comet_config.json").read_text())["comet"]
    config = CometConfig(**{**sizes, "gate_bias": tuple(sizes["gate_bias"])})
    memory = config.global_slots + config.queue_size
    c = config.chunk_size
    full = torch.ones(1, memory, dtype=torch.bool)
    layout = ChunkLayout.build(config, torch.tensor([c]), c, torch.tensor([True]), full)
    m, n = layout.num_memory_rows, layout.num_memory_rows + layout.stream_kind.shape[0]
    mask = layout.mask[0, 0] if layout.mask is not None else torch.ones(n, n, dtype=torch.bool).tril()
    rows = torch.where(layout.text_slot >= layout.n_sink, layout.text_slot + m, layout.text_slot)
    return int(mask[rows].sum(dim=1).max())


def assert_states_equal(a, b, atol: float = 1e-5) -> None:
    ta, tb = a.tensors(), b.tensors()
    assert ta.keys() == tb.keys()
    for key in ta:
        if ta[key].dtype.is_floating_point:
            torch.testing.assert_close(ta[key], tb[key], atol=atol, rtol=1e-5, msg=key)
        else:
            assert torch.equal(ta[key], tb[key]), key


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with the bundled SmolLM2 tokenizer: the command line reads text, and stays fast."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cometlm.bundled import bundled_model_dir

    path = tmp_path_factory.mktemp("tiny") / "llama"
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    torch.manual_seed(0)
    settings = dict(COMMON, vocab_size=len(tokenizer), tie_word_embeddings=True)
    LlamaForCausalLM(LlamaConfig(**settings)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled SmolLM2 tokenizer (test modules that need another one define their own)."""
    from transformers import AutoTokenizer

    from cometlm.bundled import bundled_model_dir

    return AutoTokenizer.from_pretrained(bundled_model_dir())
