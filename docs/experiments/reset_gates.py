#!/usr/bin/env python
"""Take a trained adapter's global-memory gates out of saturation: each layer's gate keeps its mean, not its weights.

Measured in session 27 (docs/EXPERIMENTS.md): after training, every layer's gate logit is dominated by a constant
``W_g . [cand ; S]`` term (mean 5-10 in size, standard deviation over chunks and slots about 1), so ``g`` is a
per-layer constant, exactly 0 or 1 in most layers: the layer either never writes its global memory or overwrites
it every chunk, whatever the chunk says. This script reads ``--samples`` prompts of each ``--tasks`` task (the
training split's generators with seeds from ``--seed`` on, which no training run draws), records every layer's gate
logits over all chunks and slots, and writes a copy of the adapter in which each layer's gate weight is zero and
its bias is that layer's mean logit clipped to [-``--clip``, ``--clip``]: on average each layer keeps and writes
as before, but no gate is saturated, and what the gate learns next can depend on content. Prints the table.

Session 22's `sizes/reset_gates.py` reset only the saturated layers, to one fixed bias, from `sizes/gates.py`'s mean
gates; those gates saturated again within 40 steps, trained with the weights at the memory's full rate. This one
keeps every layer's average and is meant for a run with `--gate-weight-lr-multiplier` well under 1.

    .venv/bin/python docs/experiments/reset_gates.py ADAPTER --out NEW_ADAPTER [--clip 3] [--samples 2]

``--center`` keeps the gates as they are and centres their input instead (session 36): the copy's config says
``gate_centered`` and each layer's ``gate_center`` is the mean of the gate's input ``[cand ; S]`` over the same
chunks and slots, with the bias raised by ``W_g . center`` so that every gate computes exactly what it computed;
only how the weights train changes (their updates no longer move every logit through the input's constant part).
It also prints that constant part's share of the input's square norm per layer.

``--bias B`` writes B as every layer's bias instead (weights still zero): an ablation of what the gates do. B = 20
keeps every layer's first closed chunk forever (g = 1), B = -20 overwrites the global memory with each chunk's
candidate (g = 0); the table still shows the adapter's own gates.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

import cometlm.memory as memory_module
from cometlm import CometForCausalLM
from cometlm.tasks.suite import SPECS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", help="the adapter folder (or shipped name) whose gates to reset")
    parser.add_argument("--out", required=True, type=Path, help="the new adapter folder (must not exist)")
    parser.add_argument("--clip", type=float, default=3.0, help="largest |bias| written (default 3: g in 0.05-0.95)")
    parser.add_argument("--tasks", nargs="+", default=["babilong-qa1", "ruler-niah-single"], choices=sorted(SPECS))
    parser.add_argument("--samples", type=int, default=2, help="prompts per task (default 2)")
    parser.add_argument("--length", type=int, default=2048, help="tokens per prompt (default 2048)")
    parser.add_argument("--seed", type=int, default=777000, help="first prompt seed (default 777000)")
    parser.add_argument("--bias", type=float, help="write this bias in every layer instead of its mean (an ablation)")
    parser.add_argument("--center", action="store_true",
                        help="keep the gates; centre their input on its mean, the bias adjusted to match")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; name a new folder")
    if args.center and args.bias is not None:
        parser.error("--center keeps every gate as it is; it takes no --bias")
    if args.clip <= 0 or args.samples < 1:
        parser.error("--clip must be > 0 and --samples at least 1")

    model = CometForCausalLM.from_pretrained(args.adapter).eval()
    layers = [layer.global_memory for layer in model.memory.layers]
    if any(g is None or g.gate is None for g in layers):
        parser.error("this adapter has no gated global memory in every layer")
    if args.center and model.comet_config.gate_centered:
        parser.error("this adapter's gates are centred already")
    logits, inputs = [], []  # per closed chunk: (L, slots) gate logits, (L, slots, 2d) gate inputs

    def record(memories, readouts, state, has_state):
        candidate = torch.stack([m.norm(r.float()) for m, r in zip(memories, readouts)])  # what the gate sees
        both = torch.cat([candidate, state.float()], dim=-1)  # (L, B, M, 2d)
        if memories[0].gate_center is not None:
            both = both - torch.stack([m.gate_center for m in memories]).float()[:, None, None]
        weight = torch.stack([m.gate.weight[0] for m in memories]).float()  # (L, 2d)
        bias = torch.stack([m.gate.bias[0] for m in memories]).float()  # (L,)
        if bool(has_state.all()):  # the first closed chunk writes S without a gate
            logits.append((torch.einsum("lbmd,ld->lbm", both, weight) + bias[:, None, None]).flatten(1))
            inputs.append(both.flatten(1, 2))
        return original(memories, readouts, state, has_state)

    original = memory_module.next_global_states
    memory_module.next_global_states = record
    try:
        with torch.inference_mode():
            for task in args.tasks:
                for i in range(args.samples):
                    sample = SPECS[task].build(model.tokenizer, args.length, 0.5, random.Random(args.seed + i),
                                               split="train")
                    model.ingest(torch.tensor([sample.prompt_ids]), progress=False)
    finally:
        memory_module.next_global_states = original
    every = torch.cat(logits, dim=1)  # (L, chunks * slots)
    mean, spread = every.mean(dim=1), every.std(dim=1)
    if args.center:
        return center(model, layers, torch.cat(inputs, dim=1), every, args.out)
    bias = mean.clamp(-args.clip, args.clip) if args.bias is None else torch.full_like(mean, args.bias)
    print("layer  mean logit  std   mean g  ->  new bias  new g")
    for index, gate in enumerate(layers):
        print(f"{index:5d} {mean[index]:10.2f} {spread[index]:5.2f}  {torch.sigmoid(every[index]).mean():6.3f}"
              f"  ->  {bias[index]:8.2f}  {torch.sigmoid(bias[index]):5.3f}")
        with torch.no_grad():
            gate.gate.weight.zero_()
            gate.gate.bias.fill_(float(bias[index]))
    model.save_pretrained(args.out, adapter=True)
    print(f"{len(logits)} gated chunk updates read; new adapter in {args.out}", file=sys.stderr)
    return 0


def center(model, layers, inputs: torch.Tensor, logits: torch.Tensor, out: Path) -> int:
    """Writes the copy with centred gates (``--center``): inputs (L, N, 2d), logits (L, N) as recorded."""
    import dataclasses

    mean = inputs.mean(dim=1)  # (L, 2d)
    share = (mean ** 2).sum(-1) / (inputs ** 2).sum(-1).mean(dim=1)
    print("layer  constant share of the input  logit std  mean g   bias -> bias + W.center")
    with torch.no_grad():
        for index, gate in enumerate(layers):
            shift = float(gate.gate.weight[0].float() @ mean[index])
            print(f"{index:5d} {share[index]:28.3f} {logits[index].std():10.2f} "
                  f"{torch.sigmoid(logits[index]).mean():7.3f}   {float(gate.gate.bias):6.2f} -> "
                  f"{float(gate.gate.bias) + shift:6.2f}")
            gate.gate.bias += shift
            gate.register_buffer("gate_center", mean[index].to(gate.gate.weight.dtype))
    model.comet_config = dataclasses.replace(model.comet_config, gate_centered=True)  # what the copy's config says
    model.save_pretrained(out, adapter=True)
    print(f"{logits.shape[1]} gate inputs per layer read; the adapter with centred gates in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
