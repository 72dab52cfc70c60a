#!/usr/bin/env python
"""Expected speed-up of the wavefront over the naive hand-off at scale, and per-rank memory for a 4B model.

Uses the cost model in ``cometlm.parallel.simulator`` (no torch). Without measurements it prints the schedule's
speed-up with free messages (equal to ``P L / (L + P - 1)`` when the chunks split evenly); given the step
times that ``benchmarks/pipeline.py`` measured with P = 2, it calibrates the cost of a (layer, chunk) step and
of a memory message from them, checks the model against the measured naive time, and adds the calibrated
speed-ups. Then it prints the per-rank memory of a LoRA + memory training step of a Qwen3-4B-shaped model at
128k and 1M tokens.

    python benchmarks/pipeline_sim.py
    python benchmarks/pipeline_sim.py --measured-layers 30 --measured-chunks 8 \\
        --measured-single 20.1 --measured-wavefront 11.0 --measured-naive 20.9
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a checkout without installing

from cometlm.parallel.simulator import (  # noqa: E402
    GIB,
    QWEN3_4B,
    CometSizes,
    Costs,
    calibrate,
    ideal_speedup,
    memory_per_rank,
    naive_time,
    single_process_time,
    wavefront_time,
)

LAYERS = (30, 36, 64)
RANKS = (2, 4, 8, 16, 64)
MEMORY_RANKS = (1, 2, 4, 8, 16, 64)
MEMORY_TOKENS = (128 * 1024, 1024 * 1024)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--chunks-per-rank", type=int, default=4,
                        help="chunks each rank owns in the speed-up table (128k tokens, C=2048 on 16 ranks: 4)")
    parser.add_argument("--backward-ratio", type=float, default=2.0,
                        help="backward cost of a (layer, chunk) step relative to its forward")
    parser.add_argument("--message-fraction", type=float, default=None, metavar="F",
                        help="also simulate messages that each cost F times a (layer, chunk) forward+backward step "
                        "(e.g. 0.1: the 16 MB of a Qwen3-4B layer's memories over a 25 GB/s link, 0.6 ms, next to a "
                        "6-8 ms (layer, chunk) step on a large GPU; an estimate, not a measurement)")
    group = parser.add_argument_group("calibration from benchmarks/pipeline.py (all four, or none)")
    group.add_argument("--measured-layers", type=int, help="layers of the measured model")
    group.add_argument("--measured-chunks", type=int, help="chunks of the measured sample")
    group.add_argument("--measured-single", type=float, help="seconds per step, one process")
    group.add_argument("--measured-wavefront", type=float, help="seconds per step, P=2 wavefront")
    group.add_argument("--measured-naive", type=float, help="seconds per step, P=2 naive (checks the model)")
    group = parser.add_argument_group("memory estimate (defaults: Qwen3-4B, the paper's CoMeT sizes)")
    group.add_argument("--chunk-size", type=int, default=2048, help="C")
    group.add_argument("--global-slots", type=int, default=512, help="M")
    group.add_argument("--temp-capacity", type=int, default=2048, help="K")
    group.add_argument("--temp-stride", type=int, default=8, help="s")
    args = parser.parse_args(argv)
    given = [args.measured_layers, args.measured_chunks, args.measured_single, args.measured_wavefront]
    if any(v is not None for v in given) and not all(v is not None for v in given):
        parser.error("calibration needs --measured-layers, --measured-chunks, --measured-single and "
                     "--measured-wavefront together (--measured-naive is optional)")
    return args


def calibrated_costs(args) -> Costs | None:
    if args.measured_single is None:
        return None
    layers, chunks = args.measured_layers, args.measured_chunks
    costs = calibrate(layers, chunks, args.measured_single, args.measured_wavefront, args.backward_ratio)
    step_ms = (costs.forward + costs.backward) * 1e3
    print(f"## Calibration (P = 2, L = {layers}, {chunks} chunks)\n")
    print(f"(layer, chunk) step forward+backward {step_ms:.2f} ms; message cost {costs.latency * 1e3:.2f} ms "
          f"({costs.latency / (costs.forward + costs.backward):.1%} of a step)\n")
    print("| schedule | measured s | model s |\n|---|---:|---:|")
    print(f"| single process | {args.measured_single:.3f} | {single_process_time(layers, chunks, costs):.3f} |")
    print(f"| wavefront | {args.measured_wavefront:.3f} | {wavefront_time(layers, 2, chunks, costs):.3f} |")
    model_naive = naive_time(layers, 2, chunks, costs)
    measured = f"{args.measured_naive:.3f}" if args.measured_naive is not None else "-"
    print(f"| naive | {measured} | {model_naive:.3f} |")
    if args.measured_naive is not None:
        print(f"\nwavefront over naive: measured {args.measured_naive / args.measured_wavefront:.2f}x, model "
              f"{model_naive / wavefront_time(layers, 2, chunks, costs):.2f}x, ideal {ideal_speedup(layers, 2):.2f}x")
    print()
    return costs


def speedup_table(args, calibrated: Costs | None) -> None:
    n, b = args.chunks_per_rank, args.backward_ratio
    variants = [("simulated with free messages", Costs(forward=1.0, backward=b))]
    if args.message_fraction is not None:
        f = args.message_fraction
        variants.append((f"messages at {f:g} of a step", Costs(forward=1.0, backward=b, latency=f * (1 + b))))
    if calibrated is not None:
        variants.append(("calibrated (this CPU's step and message costs)", calibrated))
    print(f"## Wavefront over naive, {n} chunks per rank\n")
    print("cells: ideal P L / (L + P - 1) / " + " / ".join(label for label, _ in variants) + "\n")
    print("| L | " + " | ".join(f"P={p}" for p in RANKS) + " |\n|---|" + "---:|" * len(RANKS))
    for layers in LAYERS:
        cells = []
        for ranks in RANKS:
            chunks = n * ranks
            values = [ideal_speedup(layers, ranks)] + [
                naive_time(layers, ranks, chunks, c) / wavefront_time(layers, ranks, chunks, c) for _, c in variants]
            cells.append(" / ".join(f"{v:.2f}" for v in values))
        print(f"| {layers} | " + " | ".join(cells) + " |")
    print()


def memory_table(args) -> None:
    sizes = CometSizes(args.chunk_size, args.global_slots, args.temp_capacity, args.temp_stride)
    shape = QWEN3_4B
    print(f"## Per-rank memory, Qwen3-4B shape (L={shape.layers}, d={shape.hidden}, {shape.heads}q/{shape.kv_heads}kv "
          f"heads x {shape.head_dim}, ffn {shape.ffn}, vocab {shape.vocab}: {shape.parameters() / 1e9:.2f}B parameters)\n")
    print(f"C={sizes.chunk}, M={sizes.global_slots}, K={sizes.temp_capacity}, s={sizes.stride}, r={sizes.adapter_rank}; "
          "bf16 weights and activations, LoRA r=8 on q/v + CoMeT trained (fp32 AdamW), checkpointing per "
          "(layer, chunk), sdpa attention. GiB:\n")
    print("| tokens | P | chunks/rank | weights | trainable+Adam | checkpoints | largest recompute | messages | total |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for tokens in MEMORY_TOKENS:
        chunks = -(-tokens // sizes.chunk)
        for ranks in MEMORY_RANKS:
            parts = memory_per_rank(shape, sizes, tokens, ranks)
            cells = " | ".join(f"{parts[k] / GIB:.2f}" for k in ("weights", "trainable", "checkpoints", "recompute",
                                                                   "messages"))
            print(f"| {tokens:,} | {ranks} | {-(-chunks // ranks)} | {cells} | {sum(parts.values()) / GIB:.1f} |")
    print()


def main(argv=None) -> int:
    args = parse_args(argv)
    costs = calibrated_costs(args)
    speedup_table(args, costs)
    memory_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
