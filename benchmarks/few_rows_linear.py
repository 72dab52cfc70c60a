#!/usr/bin/env python
"""Which kernel a linear layer should use for the few rows of a decoding step: ``F.linear`` (``x @ W.T``) against
``FewRowsLinear`` (``W @ x.T``, src/cometlm/linear.py), side by side in one run.

For each dtype and row count, the time to run one set of rows through every linear layer of SmolLM2-135M's 30
decoder layers (random weights of the real shapes, so they are read from memory as in the model, not from cache),
best of ``--repeats``, the two kernels interleaved; then, unless ``--no-decode``, the shipped adapter's greedy
decoding (``--new-tokens`` after a prompt of C + 7 tokens) with the model's linear layers as plain ``nn.Linear`` and
as ``FewRowsLinear``: ms/token p50 and p99, and the median step of each kind (ordinary, with a beacon, roll-over).
Run it on an otherwise quiet machine and say so.

    .venv/bin/python benchmarks/few_rows_linear.py --threads 2 [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from speed import finish_record, new_record  # the benchmark next to this one

SHAPES = ((576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536))  # q k v o gate up down


def layer_stack(dtype, rows: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from cometlm.linear import FewRowsLinear

    layers = []
    for _ in range(30):
        for out_features, in_features in SHAPES:
            layer = torch.nn.Linear(in_features, out_features, bias=False).to(dtype)
            layer.__class__ = FewRowsLinear
            layers.append(layer)
    inputs = {n: torch.randn(rows, n).to(dtype) for n in {s[1] for s in SHAPES}}
    best = {"F.linear": float("inf"), "FewRowsLinear": float("inf")}
    with torch.inference_mode():
        for _ in range(repeats):
            for name in best:
                start = time.perf_counter()
                for layer in layers:
                    x = inputs[layer.in_features]
                    layer(x) if name == "FewRowsLinear" else F.linear(x, layer.weight)
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds * 1000 for name, seconds in best.items()}


def decoding(dtype: str, few_rows: bool, new_tokens: int, threads: int) -> dict:
    import torch
    from torch import nn

    from cometlm.linear import FewRowsLinear, prepare_linears
    from cometlm.loading import ModelOptions, load_model

    model = load_model(ModelOptions(adapter="smollm2-135m-passkey", dtype=dtype, threads=threads))
    chosen = "few-rows" if any(type(m) is FewRowsLinear for m in model.modules()) else "linear"
    if few_rows:  # whatever the load measured here (linear.few_rows_pays)
        prepare_linears(model.backbone_model, kernel="few-rows")
    else:
        for module in model.modules():
            if type(module) is FewRowsLinear:
                module.__class__ = nn.Linear
    config = model.comet_config
    c = config.chunk_size
    prompt = torch.randint(100, 40000, (1, c + 7), generator=torch.Generator().manual_seed(0))
    stamps = []

    def stamp(sequences, scores):
        stamps.append(time.perf_counter())
        return False

    with torch.inference_mode():
        model.generate(prompt, max_new_tokens=new_tokens, eos_token_id=[], stopping_criteria=stamp)
    kinds = {"ordinary": [], "beacon": [], "roll-over": []}
    for t, (a, b) in enumerate(zip(stamps, stamps[1:])):  # gap t appends token t (decode_steps.py has the details)
        held = (7 + t - 1) % c + 1
        after = 1 if held == c else held + 1
        kind = "roll-over" if after == c else "beacon" if after % config.temp_stride == 0 else "ordinary"
        kinds[kind].append((b - a) * 1000)
    every = sorted(ms for values in kinds.values() for ms in values)
    p50, p99 = statistics.median(every), every[min(len(every) - 1, int(0.99 * len(every)))]
    return {"p50_ms": p50, "p99_ms": p99, "p99_over_p50": p99 / p50, "load_chose": chosen,
            **{f"{kind}_median_ms": statistics.median(v) for kind, v in kinds.items() if v}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=512, help="tokens generated per decode (default 512)")
    parser.add_argument("--no-decode", action="store_true", help="only the layer-stack timings")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.new_tokens < 2 or min(args.rows) < 1:
        parser.error("--repeats and --rows must be at least 1, --new-tokens at least 2")

    import torch

    torch.set_num_threads(args.threads)
    record = new_record(args.threads)
    record["layer_stack_ms"], record["decoding"] = {}, {}
    for dtype in args.dtypes:
        record["layer_stack_ms"][dtype] = {}
        for rows in args.rows:
            ms = layer_stack(getattr(torch, dtype), rows, args.repeats)
            record["layer_stack_ms"][dtype][rows] = ms
            print(f"{dtype:>8} {rows} rows through 30 layers' linears: F.linear {ms['F.linear']:6.2f} ms, "
                  f"FewRowsLinear {ms['FewRowsLinear']:6.2f} ms ({ms['F.linear'] / ms['FewRowsLinear']:.2f}x)",
                  flush=True)
    if not args.no_decode:
        for dtype in args.dtypes:
            record["decoding"][dtype] = {}
            for few_rows in (False, True):
                name = "FewRowsLinear" if few_rows else "nn.Linear"
                result = decoding(dtype, few_rows, args.new_tokens, args.threads)
                record["decoding"][dtype][name] = result
                steps = ", ".join(f"{k.removesuffix('_median_ms')} {v:.1f}" for k, v in result.items()
                                  if k.endswith("_median_ms"))
                print(f"{dtype:>8} decoding with {name:>13}: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} "
                      f"ms (p99/p50 {result['p99_over_p50']:.2f}); median step: {steps}; loading chose "
                      f"{result['load_chose']}", flush=True)
    finish_record(record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
