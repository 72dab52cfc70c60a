#!/usr/bin/env python
"""How distinct the global memory's M slots are: a diagnostic of its usable capacity (docs/EXPERIMENTS.md, session 24).

For each adapter: the pairwise cosine of the M learnt readout embeddings, and, after reading ``--tokens`` of Bible
text (a window of the training split's text, from a fixed seed: a diagnostic that may shape the recipe never reads
the test split), the mean pairwise cosine of the M rows of every
layer's global state S. For scale, the same statistic over 16 text positions' hidden states of the backbone alone on
the text's first chunk (a transformer's hidden states share a large common direction, so even unrelated tokens are
far from orthogonal), and the effective rank of each set of 16 rows with their mean removed. Slots much closer to each
other than text positions are, spread over fewer directions, carry less than M rows' worth.

    .venv/bin/python docs/experiments/slot_similarity.py smollm2-135m-passkey runs/probe/g3-step-150/adapter
"""

from __future__ import annotations

import argparse
import random


def mean_pairwise_cosine(rows):
    import torch
    import torch.nn.functional as F

    unit = F.normalize(rows.float(), dim=-1)
    cos = unit @ unit.T
    return cos[~torch.eye(len(rows), dtype=torch.bool)].mean().item()


def effective_rank(rows) -> float:
    """exp of the entropy of the normalised singular values of the rows, centred (their mean removed): about how many
    directions they spread over beyond what they share (at most len(rows) - 1)."""
    import torch

    centred = rows.float() - rows.float().mean(dim=0, keepdim=True)
    sv = torch.linalg.svdvals(centred)
    p = sv / sv.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapters", nargs="+", help="adapter names or directories")
    parser.add_argument("--tokens", type=int, default=1024, help="Bible tokens read (default 1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from cometlm.loading import ModelOptions, load_model
    from cometlm.tasks.haystack import load_haystack

    for name in args.adapters:
        model = load_model(ModelOptions(adapter=name, dtype="float32", threads=args.threads))
        window, _ = load_haystack("bible", model.tokenizer, "train").window(args.tokens, random.Random(args.seed))
        ids = torch.tensor([window])
        readouts = model.memory.tokens.readouts.detach()
        print(f"{name}: the {len(readouts)} readout embeddings' mean pairwise cosine "
              f"{mean_pairwise_cosine(readouts):.3f}")
        with torch.inference_mode():
            state = model.ingest(ids)
            hidden = model.backbone_model(ids[:, : model.comet_config.chunk_size], output_hidden_states=True)
        slots = [mean_pairwise_cosine(layer.global_state[0]) for layer in state.layers]
        text = [mean_pairwise_cosine(h[0, 7::8][:16]) for h in hidden.hidden_states[1:]]
        slot_rank = [effective_rank(layer.global_state[0]) for layer in state.layers]
        text_rank = [effective_rank(h[0, 7::8][:16]) for h in hidden.hidden_states[1:]]
        print(f"  global state S after {args.tokens} tokens, per layer: " + " ".join(f"{x:.2f}" for x in slots))
        print("  16 text positions' hidden states, per layer:   " + " ".join(f"{x:.2f}" for x in text))
        print(f"  means over layers: slots {sum(slots) / len(slots):.2f}, text {sum(text) / len(text):.2f}")
        print("  effective rank of the centred rows (of at most 15), per layer: S "
              + " ".join(f"{x:.1f}" for x in slot_rank))
        print("                                                          text " + " ".join(f"{x:.1f}" for x in text_rank))
        print(f"  means over layers: S {sum(slot_rank) / len(slot_rank):.1f}, text {sum(text_rank) / len(text_rank):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
