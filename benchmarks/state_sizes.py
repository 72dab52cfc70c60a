#!/usr/bin/env python
"""Bytes of one session's memory state, and sessions per GiB of RAM and per TB of disk, for the shipped adapter on
SmolLM2-135M and for a 4B model with the paper's memory sizes (Qwen3-4B: 36 layers, hidden 2560, M=512, K=2048).

Sizes come from `MemoryState.nbytes()` of states built on the meta device (nothing is allocated), with a full open
chunk (C token ids). A state file adds a header of about 4 KB.

    .venv/bin/python benchmarks/state_sizes.py [--out benchmarks/results/state_sizes.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from cometlm import CometConfig, MemoryState
from cometlm.bundled import SHIPPED_ADAPTER
from cometlm.files import output_file_problem, write_json

GIB, TB = 2**30, 10**12


def state_bytes(config: CometConfig, layers: int, hidden: int, dtype) -> int:
    state = MemoryState.empty(config, 1, layers, hidden, dtype, "meta")
    full = torch.zeros(1, config.chunk_size, dtype=torch.long, device="meta")
    return MemoryState(config, state.layers, full, state.pending_len, state.chunks_closed).nbytes()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.out and (problem := output_file_problem(args.out)):
        parser.error(f"--out: {problem}")
    shipped = json.loads((SHIPPED_ADAPTER / "comet_config.json").read_text())
    cases = [
        (f"{SHIPPED_ADAPTER.name} on SmolLM2-135M (30 layers, d=576)", CometConfig.from_dict(shipped["comet"]), 30, 576),
        ("Qwen3-4B (36 layers, d=2560), paper sizes", CometConfig(chunk_size=1024, global_slots=512, temp_stride=8,
                                                               temp_capacity=2048), 36, 2560),
    ]
    rows = []
    for name, config, layers, hidden in cases:
        for dtype in (torch.float32, torch.bfloat16):
            size = state_bytes(config, layers, hidden, dtype)
            rows.append({"model": name, "M": config.global_slots, "K": config.queue_size, "C": config.chunk_size,
                         "dtype": str(dtype).removeprefix("torch."), "state_bytes": size,
                         "sessions_per_GiB_RAM": GIB / size, "sessions_per_TB_disk": TB / size})
    print(f"{'model':<52} {'M':>4} {'K':>5} {'dtype':>8} {'MiB/session':>12} {'per GiB RAM':>12} {'per TB disk':>12}")
    for r in rows:
        print(f"{r['model']:<52} {r['M']:>4} {r['K']:>5} {r['dtype']:>8} {r['state_bytes'] / 2**20:>12.2f} "
              f"{r['sessions_per_GiB_RAM']:>12.1f} {r['sessions_per_TB_disk']:>12,.0f}")
    if args.out:
        write_json(args.out, {"command": " ".join(sys.argv), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
