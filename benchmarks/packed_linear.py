#!/usr/bin/env python
"""bfloat16 products from weights packed once (``PackedLinear``, src/cometlm/linear.py) against ``F.linear``, which
hands oneDNN the plain weight on every call; side by side in one run, on the shipped adapter in bfloat16.

- the products alone: one set of rows (1, 2, 128, 161, 193) through all of SmolLM2-135M's decoder layers' linear
  layers, best of ``--repeats``, the two kernels interleaved;
- reading ``--tokens`` of Bible text: CoMeT's ``ingest`` and the bare backbone over the same 128-token chunks, with
  each kernel, and CoMeT also with its memory rows cut out of the row-wise modules (``Backbone.run_layer``'s
  ``key_rows``; by default not on a CPU with AMX, ``MemoryCell.cuts_memory_rows``), ``--rounds`` rounds interleaved,
  each variant's best round and its target ratio (``speed.py``: CoMeT's time against the bare backbone's scaled
  by the rows CoMeT adds as queries);
- decoding ``--new-tokens`` greedy tokens with each kernel, CoMeT's and the backbone's own cached decode (p50, p99);
- the memory the packed weights take.

Run it on an otherwise quiet machine and say so.

    .venv/bin/python benchmarks/packed_linear.py --threads 2 [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import time

from speed import decoding, finish_record, new_record, text_ids  # the benchmark next to this one

ROWS = (1, 2, 128, 161, 193)


def kernel_classes(model, packed: bool) -> None:
    """Every bfloat16 linear layer of the backbone runs ``PackedLinear``'s forward or plain ``nn.Linear``'s."""
    import torch
    from torch import nn

    from cometlm.linear import PackedLinear

    for module in model.backbone_model.modules():
        if isinstance(module, nn.Linear) and module.weight.dtype == torch.bfloat16:
            module.__class__ = PackedLinear if packed else nn.Linear


def products(model, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from cometlm.linear import PackedLinear

    layers = [m for layer in model.backbone.layers for m in layer.modules()
              if isinstance(m, nn.Linear) and m.weight.dtype == torch.bfloat16]
    out = {}
    with torch.inference_mode():
        for rows in ROWS:
            inputs = {n: torch.randn(rows, n, dtype=torch.bfloat16) for n in {m.in_features for m in layers}}
            best = {"F.linear": float("inf"), "packed": float("inf")}
            for _ in range(repeats):
                for kernel in best:
                    start = time.perf_counter()
                    for m in layers:
                        x = inputs[m.in_features]
                        if kernel == "F.linear":
                            F.linear(x, m.weight, m.bias)
                        else:
                            PackedLinear.forward(m, x)
                    best[kernel] = min(best[kernel], time.perf_counter() - start)
            out[str(rows)] = {k: v * 1000 for k, v in best.items()}
            print(f"products, {rows:4d} rows through {len(layers)} linear layers: F.linear "
                  f"{best['F.linear'] * 1000:6.2f} ms, packed {best['packed'] * 1000:6.2f} ms "
                  f"({best['F.linear'] / best['packed']:.2f}x)", flush=True)
    return out


def reading(model, ids, rounds: int) -> dict:
    import torch

    from cometlm.cell import MemoryCell

    c = model.comet_config.chunk_size
    config = model.comet_config
    scale = (c + config.beacons_per_chunk + config.global_slots + int(config.attention_sink)) / c
    default_cuts = MemoryCell.__dict__["cuts_memory_rows"]  # the staticmethod itself, put back as it was
    variants = {"comet F.linear": (False, None), "comet packed": (True, None), "comet packed, cuts": (True, True),
                "bare F.linear": (False, None), "bare packed": (True, None)}
    seconds = {name: [] for name in variants}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, (packed, cuts) in variants.items():
                kernel_classes(model, packed)
                MemoryCell.cuts_memory_rows = staticmethod(lambda hidden: True) if cuts else default_cuts
                try:
                    if name.startswith("comet"):
                        model.ingest(ids[:, :c])  # the open chunk only: nothing runs yet
                        start = time.perf_counter()
                        model.ingest(ids, progress=False)
                    else:
                        model.backbone.hidden_states(ids[:, :c])  # packs the weights outside the timing
                        start = time.perf_counter()
                        for a in range(0, ids.shape[1], c):
                            model.backbone.hidden_states(ids[:, a : a + c])
                    seconds[name].append(time.perf_counter() - start)
                finally:
                    MemoryCell.cuts_memory_rows = default_cuts
    best = {name: min(s) for name, s in seconds.items()}
    out = {"tokens": ids.shape[1], "rounds": rounds, "seconds": seconds, "best_s": best}
    for kernel in ("F.linear", "packed"):
        bare = best[f"bare {kernel}"]
        for name in variants:
            if name.startswith("comet") and kernel in name:
                out.setdefault("target_ratio", {})[name] = best[name] / (bare * scale)
    for name, s in best.items():
        ratio = out["target_ratio"].get(name)
        print(f"reading {ids.shape[1]} tokens, {name:20s}: best {s:.2f} s ({ids.shape[1] / s:.0f} tok/s)"
              + (f", target ratio {ratio:.3f}" if ratio else ""), flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens read per measurement (default 2048)")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens generated per decode (default 256)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each reading and decode (default 3)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each product timing (default 5)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    from cometlm.linear import packed_bytes
    from cometlm.loading import ModelOptions, load_model

    torch.set_num_threads(args.threads)
    record = new_record(args.threads)
    model = load_model(ModelOptions(adapter="smollm2-135m-passkey", dtype="bfloat16"))
    ids = text_ids(model, args.tokens)
    record["products_ms"] = products(model, args.repeats)
    record["reading"] = reading(model, ids, args.rounds)
    record["decoding"] = {}
    for packed in (False, True):
        kernel_classes(model, packed)
        name = "packed" if packed else "F.linear"
        decode = decoding(model, ids, args.new_tokens, args.rounds)
        record["decoding"][name] = {key: decode[key] for key in ("comet", "backbone_cached", "p99_over_p50",
                                                                 "p50_ratio_to_backbone")}
        print(f"decoding {args.new_tokens} tokens, {name}: CoMeT p50 {decode['comet']['p50_ms']:.1f} ms, p99 "
              f"{decode['comet']['p99_ms']:.1f} ms; the backbone's cached decode p50 "
              f"{decode['backbone_cached']['p50_ms']:.1f} ms", flush=True)
    held = packed_bytes()
    record["packed_weight_mib"] = held / 2**20
    print(f"packed weights held: {held / 2**20:.0f} MiB", flush=True)
    finish_record(record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
