#!/usr/bin/env python
"""Where a needle travels through the global memory, layer by layer: written, kept, read?

For needles of the validation split (training's templates and text, prompts training never drew) at 25% depth of a
prompt, read chunk by chunk with eager attention so that every layer's attention weights can be seen:

- readouts -> needle: at the needle's chunk, the readouts' attention mass on the needle's tokens over what an even
  spread over the chunk's text would give (1: no preference; the readouts' outputs are what S is written from);
- |dS| needle chunk / other chunks: how much S changes when the needle's chunk closes, relative to its norm, against
  the mean change of the other chunks (a content-dependent gate writes more at the needle; about 0: the layer's
  memory is frozen);
- kept: the share of the needle chunk's change of S still there when the question is read (the projection of the
  change from before the needle to the end onto the needle's own change; shown only where that change is at least
  1% of S);
- question -> G / T / sink / text: the question's last token's attention mass on the global rows, the temporary
  rows, the sink and the text of its own chunk (where the answer is read from).

    .venv/bin/python docs/experiments/memory_paths.py ADAPTER [--tokens 2048] [--samples 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import random
import sys

import torch

from cometlm import cell as cell_module
from cometlm.files import write_text
from cometlm.loading import ModelOptions, load_model
from cometlm.tasks.suite import SPECS

COLUMNS = ("readouts->needle", "|dS| needle", "|dS| other", "kept", "question->G", "->T", "->sink", "->text")


def measure(adapter: str, tokens: int, samples: int, depth: float = 0.25) -> dict[str, list[float]]:
    """Every column, per layer, averaged over ``samples`` needles (``kept``: NaN where the needle's change is small)."""
    model = load_model(ModelOptions(adapter=adapter, dtype="float32"))
    model.backbone.model.set_attn_implementation("eager")  # the only kernel that returns attention weights
    tok, c, slots = model.tokenizer, model.comet_config.chunk_size, model.comet_config.global_slots
    layers = model.backbone.num_layers
    runs = []  # per chunk run, in order: its layout and each layer's attention weights (heads, queries, keys)
    start = cell_module.MemoryCell.start

    def recording_start(self, *args, **kwargs):
        inputs = start(self, *args, **kwargs)
        runs.append({"layout": inputs.layout, "attn": []})
        return inputs

    hooks = [layer.self_attn.register_forward_hook(lambda m, a, out: runs[-1]["attn"].append(out[1][0].float()))
             for layer in model.backbone.layers]
    cell_module.MemoryCell.start = recording_start
    sums = {name: torch.zeros(layers) for name in COLUMNS}
    kept_count = torch.zeros(layers)
    spec = SPECS["ruler-niah-single"]
    try:
        for s in range(samples):
            sample = spec.build(tok, tokens, depth, random.Random(f"memory-paths/{s}"), split="train",
                                **spec.defaults())
            ids, first = sample.prompt_ids, sample.fact_starts[sample.key]
            n_fact = len(tok(sample.facts[sample.key], add_special_tokens=False)["input_ids"])
            needle_chunk = first // c
            runs.clear()
            states = []
            with torch.inference_mode():
                state = model.init_memory(1)
                for a in range(0, len(ids), c):  # chunk k runs when piece k + 1 arrives, the last one at the close
                    state = model.ingest(torch.tensor([ids[a : a + c]]), state)
                    states.append(state)
                state = model.close_open_chunk(state)
            after = [st.layers for st in states[1:]] + [state.layers]  # after[k]: the memories once chunk k closed
            run = runs[needle_chunk]
            layout, m = run["layout"], run["layout"].num_memory_rows
            text = layout.text_slot + m  # a stream slot's row in the sequence: after the memory rows (and the sink)
            j = first - needle_chunk * c
            needle = text[j : min(j + n_fact, c)]
            for li, attn in enumerate(run["attn"]):
                w = attn[:, layout.readout_slot + m].mean(dim=(0, 1))
                sums["readouts->needle"][li] += float(w[needle].sum()) / (float(w[text].sum()) * len(needle) / len(text))
            final = runs[-1]
            layout, m = final["layout"], final["layout"].num_memory_rows
            question = int(layout.text_slot[int(layout.text_valid[0].sum()) - 1]) + m
            for li, attn in enumerate(final["attn"]):
                w = attn[:, question].mean(dim=0)  # sequence: sink, G (slots rows), T, then the stream rows
                sums["question->G"][li] += float(w[1 : 1 + slots].sum())
                sums["->T"][li] += float(w[1 + slots : 1 + m].sum())
                sums["->sink"][li] += float(w[0])
                sums["->text"][li] += float(w[1 + m :].sum())
            for li in range(layers):
                s_ = [x[li].global_state[0].flatten() for x in after]
                before, change = s_[needle_chunk - 1], s_[needle_chunk] - s_[needle_chunk - 1]
                sums["|dS| needle"][li] += float(change.norm() / before.norm())
                other = [float((s_[k] - s_[k - 1]).norm() / s_[k - 1].norm()) for k in range(1, len(s_))
                         if k != needle_chunk]
                sums["|dS| other"][li] += sum(other) / len(other)
                if float(change.norm() / before.norm()) >= 0.01:
                    sums["kept"][li] += float((s_[-1] - before) @ change / (change @ change))
                    kept_count[li] += 1
    finally:
        cell_module.MemoryCell.start = start
        for hook in hooks:
            hook.remove()
    out = {name: (v / samples).tolist() for name, v in sums.items()}
    out["kept"] = [float(v / n) if n else float("nan") for v, n in zip(sums["kept"], kept_count)]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter", help="a saved CoMeT adapter folder or the name of a shipped one")
    parser.add_argument("--tokens", type=int, default=2048, help="prompt length (default 2048)")
    parser.add_argument("--samples", type=int, default=3, help="needles to average over (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = measure(args.adapter, args.tokens, args.samples)
    lines = [f"{args.adapter}: {args.samples} needles of the validation split at 25% depth of {args.tokens} tokens",
             "layer " + " ".join(f"{name:>16}" for name in COLUMNS)]
    for li in range(len(table["kept"])):
        lines.append(f"{li:5d} " + " ".join(f"{table[name][li]:16.3f}" for name in COLUMNS))
    lines.append("mean  " + " ".join(f"{torch.tensor(table[name]).nanmean():16.3f}" for name in COLUMNS))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
