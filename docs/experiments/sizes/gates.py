#!/usr/bin/env python
"""How much each layer's global memory writes: the mean gate g per layer (S' = g*S + (1-g)*candidate) over every
chunk update after a sample's first, on samples of the given training data (the training split, a seed no run used),
and the lowest gate of a sample's updates (averaged over samples): a layer that keeps its state but writes when a
fact passes has a mean near 1 and a low minimum; one that ignores content has both alike.

g near 1 keeps the old state (the layer barely writes); g near 0 overwrites it each chunk. METHOD.md section 3: a
chrono bias of 6 at the last layer starts deep layers at g = 0.9975, which serves one fact and may starve the rest.

    .venv/bin/python docs/experiments/sizes/gates.py ADAPTER --data babilong-qa1 lm:bible --samples 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import cometlm.memory as memory
from cometlm.loading import ModelOptions, load_model
from cometlm.training.specs import load_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", help="a saved CoMeT adapter folder or a shipped adapter's name")
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=900)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    model = load_model(ModelOptions(adapter=args.adapter, dtype="bfloat16", threads=args.threads)).eval()
    seen: list[torch.Tensor] = []  # per update: (L,) mean gate over the streams that had a state
    original = memory.next_global_states

    def watched(memories, readouts, state, has_state):
        if memories[0].gate is not None and bool(has_state.any()):
            candidate = torch.stack([m.norm(r.float()) for m, r in zip(memories, readouts)])
            weight = torch.stack([m.gate.weight for m in memories]).float()
            bias = torch.stack([m.gate.bias for m in memories]).float()
            both = torch.cat([candidate, state.float()], dim=-1).flatten(1, 2)
            g = torch.sigmoid(torch.baddbmm(bias[:, None], both, weight.transpose(1, 2)))  # (L, B*M, 1)
            g = g.view(*state.shape[:-1])[:, has_state]  # (L, b, M)
            seen.append(g.mean(dim=(1, 2)))
        return original(memories, readouts, state, has_state)

    memory.next_global_states = watched
    result = {"command": " ".join(sys.argv), "adapter": args.adapter, "gate_bias": [], "data": {}}
    result["gate_bias"] = [round(float(layer.global_memory.gate.bias.detach()), 3) for layer in model.memory.layers]
    with torch.inference_mode():
        for spec in args.data:
            data = load_dataset(spec, model.tokenizer, args.max_length, seed=args.seed)
            traces = []  # per sample: (updates, L)
            for i in range(args.samples):
                seen.clear()
                model(torch.tensor([data[i].input_ids]))
                traces.append(torch.stack(seen))
            mean = torch.cat(traces).mean(0)
            low = torch.stack([trace.min(0).values for trace in traces]).mean(0)
            result["data"][spec] = {"mean": [round(float(v), 4) for v in mean],
                                    "lowest": [round(float(v), 4) for v in low],
                                    "traces": [[[round(float(v), 3) for v in row] for row in trace] for trace in traces]}
            print(f"{spec + ' mean':30s} " + " ".join(f"{v:.2f}" for v in mean.tolist()), flush=True)
            print(f"{spec + ' lowest':30s} " + " ".join(f"{v:.2f}" for v in low.tolist()), flush=True)
    memory.next_global_states = original
    print("bias per layer: " + " ".join(f"{b:.1f}" for b in result["gate_bias"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
