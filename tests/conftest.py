"""Tiny random backbones of every supported family, built from configs (no downloads), and helpers."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from cometlm import CometConfig, CometForCausalLM

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

FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON, tie_word_embeddings=True)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**COMMON, tie_word_embeddings=False, sliding_window=512)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON, tie_word_embeddings=True)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=8, tie_word_embeddings=False)),  # q/k norms
}

SMALL = CometConfig(chunk_size=8, global_slots=3, temp_stride=4, temp_capacity=5, adapter_rank=4)


def tiny_backbone(family: str = "llama", seed: int = 0, attn: str = "sdpa"):
    torch.manual_seed(seed)
    model = FAMILIES[family]()
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
