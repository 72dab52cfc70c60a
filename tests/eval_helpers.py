"""Helpers shared by the evaluation tests: a tiny model that reads SmolLM2's tokens, result files, a spy."""

from __future__ import annotations

import json

import torch
from conftest import COMMON, randomize_memory
from transformers import LlamaConfig, LlamaForCausalLM

from cometlm import CometConfig, CometForCausalLM

# Fields of results and records that depend on time, machine or process.
VOLATILE = {"seconds", "tokens_per_s", "peak_rss_mib", "load1", "command", "cost", "environment"}


def tiny_text_model(chunk_size: int = 64, tokenizer=None) -> CometForCausalLM:
    """A random 2-layer Llama whose vocabulary covers SmolLM2's tokenizer. With C=64 the passkey question (11
    tokens) and answer (9) fit in one chunk, and a 300-token prompt spans 5 chunks."""
    torch.manual_seed(0)
    backbone = LlamaForCausalLM(LlamaConfig(**{**COMMON, "vocab_size": 49152}, tie_word_embeddings=True)).eval()
    config = CometConfig(chunk_size=chunk_size, global_slots=3, temp_stride=4, temp_capacity=8, adapter_rank=4)
    return randomize_memory(CometForCausalLM.from_backbone(backbone, config, tokenizer=tokenizer)).eval()


def stable(value):
    """A summary or record without the fields that depend on time, machine or process."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Spy:
    """Wraps a generate function, recording each call; raises KeyboardInterrupt once `stop_after` calls ran."""

    def __init__(self, generate, stop_after=None):
        self.generate, self.stop_after, self.calls = generate, stop_after, []

    def __call__(self, input_ids, **kwargs):
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt
        self.calls.append((input_ids, kwargs))
        return self.generate(input_ids, **kwargs)
