#!/usr/bin/env python
"""How much untrained CoMeT memory disturbs SmolLM2: next-token loss on the first 2,048 tokens of the bundled
essays at C=1024, for plain chunking, each memory alone, both, and both with the attention sink.

    .venv/bin/python benchmarks/untrained_loss.py
"""

import torch

from cometlm import CometConfig, CometForCausalLM
from cometlm.bundled import load_backbone
from cometlm.tasks.corpora import corpus_tokens

VARIANTS = {
    "chunked, no memory": dict(global_slots=0, temp_stride=0),
    "temporary memory only": dict(global_slots=0),
    "global memory only": dict(temp_stride=0, temp_capacity=0),
    "both memories": {},
    "both memories + attention sink": dict(attention_sink=True),
}

if __name__ == "__main__":
    backbone, tokenizer = load_backbone()
    ids = corpus_tokens("essays", tokenizer, 2048)[None]
    with torch.inference_mode():
        for name, options in VARIANTS.items():
            model = CometForCausalLM.from_backbone(backbone, CometConfig(chunk_size=1024, **options), tokenizer=tokenizer)
            print(f"{name:>32}: {model(ids, labels=ids).loss.item():.3f}")
