"""Layer-level pipeline parallelism over a sample's chunks (METHOD.md section 5), outside the model.

Each of ``P`` ranks owns a contiguous block of a sample's chunks and drives the model's per-(layer, chunk) step
(``CometForCausalLM.start_chunk``, ``layer_step``, ``end_chunk``, ``chunk_loss``); only the fixed-size memories
of one layer cross between neighbouring ranks, as one packed buffer per boundary per layer.

- ``blocks.py``: which chunks each rank owns (no torch).
- ``messages.py``: the packed memory buffer and the autograd-aware send/recv.
- ``schedule.py``: the wavefront and naive schedules of one rank (``Pipeline``).
- ``distributed.py``: process groups from torchrun, data parallelism, gradient reduction, failures.
- ``simulator.py``: a cost model of both schedules, and a per-rank memory estimate (no torch).

This package is imported lazily: ``cometlm --help`` must not import torch.
"""
