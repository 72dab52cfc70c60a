"""Resident memory and CPU time of one long read with malloc_trim after every chunk, every few seconds, or never.

    python docs/experiments/reading-overhead/trim_interval.py INTERVAL_S [TOKENS] [DTYPE]

INTERVAL_S: 0 trims after every chunk (the code before session 20), 2 as now, ``inf`` never; a trim at most every
INTERVAL_S seconds within each ``ingest`` call; run each in its own process
(the resident set is the process's). Prints the RSS every 16 chunks, the minor page faults and the CPU time.
"""

import resource
import sys
import time

import torch

import cometlm.model as model_module
from cometlm.loading import ModelOptions, load_model
from cometlm.runtime import PeriodicTrim
from cometlm.tasks.corpora import corpus_tokens

interval = float(sys.argv[1])
tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
dtype = sys.argv[3] if len(sys.argv) > 3 else "float32"
torch.set_num_threads(1)
model = load_model(ModelOptions(adapter="smollm2-135m-passkey", dtype=dtype))
ids = torch.as_tensor(corpus_tokens("bible", model.tokenizer, tokens + 1))[None, : tokens + 1]
c = model.comet_config.chunk_size


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


model_module.PeriodicTrim = lambda: PeriodicTrim(interval)  # what ingest makes for each call
rss = []
with torch.inference_mode():
    state = model.ingest(ids[:, : c + 1], progress=False)
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
    for a in range(c + 1, tokens + 1, 16 * c):
        state = model.ingest(ids[:, a : a + 16 * c], state, progress=False)
        rss.append(round(rss_mib()))
    cpu, faults = time.process_time() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(f"interval {interval} s, {dtype}, {tokens} tokens: CPU {cpu:.2f} s, {faults} minor faults, "
      f"RSS every 16 chunks {rss}")
