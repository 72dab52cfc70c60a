#!/usr/bin/env python
"""Decoding latency per kind of step: which steps make the tail of CoMeT's per-token latency.

Generates ``--new-tokens`` greedy tokens after a prompt of C + 7 random tokens (as `benchmarks/speed.py` does) and
times every step with a stopping criterion, then sorts the steps by what they did besides choosing a token:

  roll-over  the token filled the open chunk: the last beacon and the M readouts ran with it, the chunk was closed
             from what it kept (every layer's memory updated from the readouts' and beacons' outputs) and a new
             one opened (the new memory rows through every layer)
  first      the token opened a chunk (after its memory rows)
  beacon     the token completed an s-block, so the block's beacon row ran with it
  plain      one text row

Prints p50 and p99 over all steps, each kind's count, median and maximum, the slowest steps with their
position in the chunk, and the process's minor page faults while generating (memory the allocator took from the
operating system and touched for the first time). Run it alone on the machine: other processes' load shows up as
slow steps.

    .venv/bin/python benchmarks/decode_steps.py --threads 2
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comet", default="smollm2-135m-passkey", help="the model (default: the shipped adapter)")
    parser.add_argument("--new-tokens", type=int, default=1024, help="tokens generated (default 1024)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2")

    import torch

    from cometlm.loading import ModelOptions, load_model

    model = load_model(ModelOptions(adapter=args.comet, dtype=args.dtype, threads=args.threads))
    config = model.comet_config
    c, first_open = config.chunk_size, 7
    prompt = torch.randint(100, 40000, (1, c + first_open), generator=torch.Generator().manual_seed(0))
    stamps = []

    def stamp(sequences, scores):
        stamps.append(time.perf_counter())
        return False

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode():
        model.generate(prompt, max_new_tokens=args.new_tokens, eos_token_id=[], stopping_criteria=stamp)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    # Gap t runs from the stamp of token t to that of token t + 1: it appends token t and computes the logits of
    # token t + 1 (and closes the chunk when token t fills it).
    kinds = {"roll-over": [], "first": [], "beacon": [], "plain": []}
    slow = []
    for t, (a, b) in enumerate(zip(stamps, stamps[1:])):
        ms = (b - a) * 1000
        held = (first_open + t - 1) % c + 1  # text tokens read into the chunk before token t: 1..C
        after = 1 if held == c else held + 1  # token t's place in its chunk
        if after == c:
            kind = "roll-over"
        elif after == 1:
            kind = "first"
        elif config.use_temp and after % config.temp_stride == 0:
            kind = "beacon"
        else:
            kind = "plain"
        kinds[kind].append(ms)
        slow.append((ms, kind, after))
    every = sorted(ms for values in kinds.values() for ms in values)
    p50, p99 = statistics.median(every), every[min(len(every) - 1, int(0.99 * len(every)))]
    print(f"{args.comet} ({args.dtype}, C={c}): {len(every)} steps, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"p99/p50 {p99 / p50:.2f}; {faults:,} minor page faults while generating")
    for kind, values in kinds.items():
        if values:
            print(f"  {kind:>9}: {len(values):4d} steps, median {statistics.median(values):6.1f} ms, "
                  f"max {max(values):6.1f} ms")
    print("  slowest: " + ", ".join(f"{ms:.0f} ms ({kind}, token {after} of its chunk)"
                                    for ms, kind, after in sorted(slow, reverse=True)[:12]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
