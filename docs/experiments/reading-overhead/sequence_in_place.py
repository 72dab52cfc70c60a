"""Reading with one sequence passed from layer to layer (memory rows written in place) against each layer building
its own input and output (the path training takes). One thread, CPU time, best of interleaved rounds.

    python docs/experiments/reading-overhead/sequence_in_place.py DTYPE [REPEATS]

The "per layer" variant runs the with-gradients loop under ``torch.no_grad`` by making ``torch.is_grad_enabled``
answer True inside ``MemoryCell`` only; gradients stay off either way. Random token ids, the shipped adapter,
2,048 tokens; the bare backbone over 16 chunks of 161 rows alongside.
"""

import sys

import torch

import cometlm.cell as cell_module
from cometlm.loading import ModelOptions, load_model
from interleaved import interleaved, report

dtype = sys.argv[1]
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 4
torch.set_num_threads(1)
model = load_model(ModelOptions(adapter="smollm2-135m-passkey", dtype=dtype))
n = 2048
ids = torch.randint(1000, 20000, (1, 4 * n + 1))
real_torch = cell_module.torch


class PerLayerTorch:
    """``torch`` as cell.py sees it, except that gradients look on (so the per-layer loop runs)."""

    def __getattr__(self, name):
        return getattr(real_torch, name)

    @staticmethod
    def is_grad_enabled():
        return True


def comet(per_layer):
    def run():
        cell_module.torch = PerLayerTorch() if per_layer else real_torch
        model.ingest(ids[:, : n + 1], progress=False)
        cell_module.torch = real_torch
    return run


bare = lambda: [model.backbone.hidden_states(ids[:, a * 161 : (a + 1) * 161]) for a in range(16)]  # noqa: E731
runs = {"in place": comet(False), "per layer": comet(True), "bare 161 rows": bare}
with torch.no_grad():
    model.ingest(ids[:, :300])
    seconds = interleaved(runs, repeats)
report(dtype, seconds, "bare 161 rows")
