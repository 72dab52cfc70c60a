#!/usr/bin/env python
"""What skipping work at the memory rows buys: CoMeT's reading with the memory rows skipping the query projection,
the output projection and the MLP (the default, ``Family.row_modules``), the MLP only, or nothing, side by side in
one process against the bare backbone over independent chunks of the same size.

A memory row is only a key and a value for the rows after it, so those modules' outputs at it are thrown away
(METHOD.md section 4). Whether skipping them pays depends on the sizes: the hooks that cut the rows out and put zeros
back cost a copy per module. ``--wide D`` runs the same on a random 4-layer Llama of hidden size D with the shipped
adapter's CoMeT sizes, to see how it scales. "target ratio" is as in ``speed.py``: CoMeT's time per text token over
the bare backbone's scaled by the query rows CoMeT adds (1.0 is the floor, the goal <= 1.1). The best of
``--repeats`` reads of each variant, interleaved, so a change in the machine's speed hits them alike.

    .venv/bin/python benchmarks/row_skipping.py --dtypes float32 bfloat16 --threads 2 [--wide 1536] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from speed import finish_record, new_record  # the benchmark next to this one

VARIANTS = {"query, output and MLP": None, "MLP only": ("mlp",), "nothing": ()}  # None: the family's own list


def shipped(dtype: str):
    from cometlm.loading import ModelOptions, load_model

    return load_model(ModelOptions(adapter="smollm2-135m-passkey", dtype=dtype))


def wide(hidden: int, dtype: str):
    """A random 4-layer Llama of this hidden size, with the shipped adapter's CoMeT sizes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cometlm import CometConfig, CometForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=4,
                         num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256), vocab_size=4096,
                         max_position_embeddings=4096)
    sizes = CometConfig(chunk_size=128, global_slots=16, temp_stride=8, temp_capacity=16, attention_sink=True)
    return CometForCausalLM.from_backbone(LlamaForCausalLM(config).to(getattr(torch, dtype)), sizes).eval()


def measure(model, ids, repeats: int) -> dict:
    import torch

    family = model.backbone.family
    c = model.comet_config.chunk_size
    seconds = {name: [] for name in [*VARIANTS, "bare"]}
    try:
        with torch.inference_mode():
            model.ingest(ids[:, :c])  # warm-up
            for _ in range(repeats):
                for name, rows in VARIANTS.items():
                    model.backbone.family = dataclasses.replace(family, row_modules=family.row_modules if rows is None else rows)
                    start = time.perf_counter()
                    model.ingest(ids, progress=False)
                    seconds[name].append(time.perf_counter() - start)
                model.backbone.family = family
                start = time.perf_counter()
                for a in range(0, ids.shape[1], c):
                    model.backbone.hidden_states(ids[:, a : a + c])
                seconds["bare"].append(time.perf_counter() - start)
    finally:
        model.backbone.family = family
    config = model.comet_config
    added = config.beacons_per_chunk + config.global_slots + int(config.attention_sink)
    target = min(seconds["bare"]) * (c + added) / c
    n = ids.shape[1]
    return {name: {"tokens_per_s": n / min(s), "seconds": s, **({"target_ratio": min(s) / target} if name != "bare" else {})}
            for name, s in seconds.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens read per measurement (default 2048)")
    parser.add_argument("--repeats", type=int, default=3, help="reads of each variant, interleaved (default 3)")
    parser.add_argument("--wide", type=int, nargs="*", default=[], metavar="D",
                        help="also random 4-layer Llamas of these hidden sizes (multiples of 256)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if any(d < 256 or d % 256 for d in args.wide):
        parser.error("--wide takes hidden sizes that are multiples of 256")

    import torch

    torch.set_num_threads(args.threads)
    record = {**new_record(args.threads), "runs": []}
    for dtype in args.dtypes:
        for name, build in [("shipped adapter", lambda: shipped(dtype)),
                            *((f"random Llama d={d}", lambda d=d: wide(d, dtype)) for d in args.wide)]:
            model = build()
            if model.tokenizer is not None:
                from cometlm.tasks.corpora import corpus_tokens

                ids = torch.as_tensor(corpus_tokens("bible", model.tokenizer, args.tokens))[None, : args.tokens]
            else:
                ids = torch.randint(0, model.backbone.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0))
            result = measure(model, ids, args.repeats)
            record["runs"].append({"model": name, "dtype": dtype, "variants": result})
            row = "; ".join(f"{v}: {r['tokens_per_s']:.0f} tok/s, target ratio {r['target_ratio']:.3f}"
                            for v, r in result.items() if v != "bare")
            print(f"[{name}, {dtype}] memory rows skip {row}; bare chunks {result['bare']['tokens_per_s']:.0f} tok/s",
                  flush=True)
    finish_record(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
