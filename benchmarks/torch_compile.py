#!/usr/bin/env python
"""torch.compile of the decoder layers against eager, reading 4,096 Bible tokens with the shipped adapter (2 threads):
tokens/s of two eager reads, the first compiled read (compilation included) and two compiled reads, and how far the
compiled memory state moves from the eager one. The per-chunk step runs through the layers compiled in place
(`nn.Module.compile(dynamic=True)`); nothing else changes."""

import time, torch
torch.set_num_threads(2)
from cometlm.loading import ModelOptions, load_model
from cometlm.tasks.corpora import corpus_tokens
m = load_model(ModelOptions(adapter="smollm2-135m-passkey"))
ids = torch.as_tensor(corpus_tokens("bible", m.tokenizer, 4096))[None, :4096]
def read():
    with torch.inference_mode():
        t = time.perf_counter(); s = m.ingest(ids); return 4096 / (time.perf_counter() - t), s
eager, s0 = read(); eager2, _ = read()
print("eager tok/s", round(eager), round(eager2), flush=True)
t = time.perf_counter()
for layer in m.backbone.layers:
    layer.compile(dynamic=True)
first, s1 = read()
print(f"compiled: first read (with compilation) {first:.0f} tok/s, {time.perf_counter() - t:.0f} s", flush=True)
again, s2 = read(); again2, _ = read()
print("compiled tok/s", round(again), round(again2), flush=True)
print("max |S| diff", max(float((a.global_state - b.global_state).abs().max()) for a, b in zip(s0.layers, s2.layers)))
