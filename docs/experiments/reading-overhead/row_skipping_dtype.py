"""Does cutting the memory rows out of the row-wise modules pay, in float32 and in bfloat16? One thread, CPU time.

    python docs/experiments/reading-overhead/row_skipping_dtype.py DTYPE [REPEATS]

Interleaved, best of REPEATS: CoMeT's ingest of 2,048 tokens with the memory rows cut out of the query and output
projections and the MLP ("skip", Backbone.run_layer's key_rows) and with them run through everything ("no skip"),
and the bare backbone over 16 independent chunks of 161 and of 193 rows (the stream rows alone; with the memory
rows). Random token ids; the shipped adapter.
"""

import sys

import torch

from cometlm.cell import MemoryCell
from cometlm.loading import ModelOptions, load_model
from interleaved import interleaved, report

dtype = sys.argv[1]
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 4
torch.set_num_threads(1)
model = load_model(ModelOptions(adapter="smollm2-135m-passkey", dtype=dtype))
n, c = 2048, model.comet_config.chunk_size
ids = torch.randint(1000, 20000, (1, 4 * n + 1))
backbone = model.backbone
policy = MemoryCell.cuts_memory_rows


def bare(rows):
    return lambda: [backbone.hidden_states(ids[:, a * rows : (a + 1) * rows]) for a in range(n // c)]


def comet(skip):
    def run():
        MemoryCell.cuts_memory_rows = staticmethod(lambda hidden: skip)
        model.ingest(ids[:, : n + 1], progress=False)
        MemoryCell.cuts_memory_rows = policy
    return run


runs = {"skip": comet(True), "no skip": comet(False), "bare 161 rows": bare(161), "bare 193 rows": bare(193)}
with torch.inference_mode():
    model.ingest(ids[:, :300])
    seconds = interleaved(runs, repeats)
report(dtype, seconds, "bare 161 rows")
