#!/usr/bin/env python
"""Would the answer come out if the question read the global memory more? A logit bias on the global rows, untrained.

`memory_paths.py` found g8's question giving the global rows about 2% of its attention, almost all in the last two
layers, while the readouts find the needle and the gates write it. This asks, without training, whether more of
that reading would help: every layer in LAYERS adds BIAS to the attention logits of every query on the global
rows' keys (eager attention, so the mask is additive), either in the answer's own chunk only (`--where last`:
the question and answer tokens read G more, nothing written changes) or in every chunk (`--where all`: what a
learned read bias starting at BIAS would do, the writes included). It prints the answer's teacher-forced loss
(as `sizes/answer_loss.py` scores it, validation generators, seed 901) by the fact's distance, per setting.

A lower loss for facts only the global memory holds says the read limits and a learned read bias could lift it;
no setting lower says nothing certain (the model was never trained to use what more attention brings).

    .venv/bin/python docs/experiments/read_boost.py ADAPTER --settings last:0-29:2 last:15-29:2 ... [--out FILE]

A setting is WHERE:FIRST-LAST:BIAS; the setting with bias 0 is always measured first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "sizes"))
from answer_loss import distance_groups, fact_distance, score  # noqa: E402  (a script beside this one)

from cometlm import cell as cell_module  # noqa: E402
from cometlm.files import write_text  # noqa: E402
from cometlm.loading import ModelOptions, load_model  # noqa: E402
from cometlm.training.specs import load_dataset  # noqa: E402

DATA = ("passkey:digits=3-9", "ruler-niah-single:depth=0-100",
        "ruler-niah-single:haystack=bible,values=uuid,depth=0-100",
        "ruler-niah-single:haystack=noise,keys=number,values=word,depth=0-100")


def parse_setting(text: str) -> tuple[str, int, int, float]:
    where, layers, bias = text.split(":")
    first, last = (int(v) for v in layers.split("-"))
    if where not in ("last", "all") or first > last:
        raise ValueError(f"a setting is WHERE:FIRST-LAST:BIAS with WHERE last or all (got {text!r})")
    return where, first, last, float(bias)


class ReadBias:
    """Adds a bias to the global rows' attention logits in some layers, in the last chunk or in every chunk."""

    def __init__(self, model):
        self.model, self.setting, self.layout, self.chunk, self.chunks = model, None, None, 0, 0
        self.start = cell_module.MemoryCell.start
        owner = self

        def recording_start(cell, *args, **kwargs):
            inputs = owner.start(cell, *args, **kwargs)
            owner.layout, owner.chunk = inputs.layout, owner.chunk + 1
            return inputs

        cell_module.MemoryCell.start = recording_start
        self.hooks = [layer.self_attn.register_forward_pre_hook(self._hook(i), with_kwargs=True)
                      for i, layer in enumerate(model.backbone.layers)]

    def _hook(self, index: int):
        def add_bias(module, args, kwargs):
            if self.setting is None or self.layout is None:
                return None
            where, first, last, bias = self.setting
            if not first <= index <= last or bias == 0 or (where == "last" and self.chunk != self.chunks):
                return None
            layout, slots = self.layout, self.model.comet_config.global_slots
            n_global = int((layout.memory_index < slots).sum())
            mask = kwargs["attention_mask"].clone()
            columns = slice(layout.n_sink, layout.n_sink + n_global)  # sink, then G, T, then the stream rows
            mask[..., columns] += bias
            kwargs["attention_mask"] = mask
            return args, kwargs
        return add_bias

    def close(self) -> None:
        cell_module.MemoryCell.start = self.start
        for hook in self.hooks:
            hook.remove()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter", help="a saved CoMeT adapter folder")
    parser.add_argument("--settings", nargs="+", required=True, help="WHERE:FIRST-LAST:BIAS, e.g. last:15-29:2")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=12, help="samples per dataset (default 12)")
    parser.add_argument("--seed", type=int, default=901, help="the datasets' seed (default 901, the rules')")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the results here (JSON; a .txt beside it)")
    args = parser.parse_args(argv)
    try:
        settings = [("last", 0, 0, 0.0)] + [parse_setting(s) for s in args.settings]
    except ValueError as error:
        parser.error(str(error))
    model = load_model(ModelOptions(adapter=args.adapter, dtype="bfloat16", threads=args.threads)).eval()
    model.backbone.model.set_attn_implementation("eager")  # additive masks, so a bias can be added to them
    c = model.comet_config.chunk_size
    samples = []
    for spec in DATA:
        data = load_dataset(spec, model.tokenizer, args.max_length, seed=args.seed)
        samples += [(spec, data[i]) for i in range(args.samples)]
    distances = [fact_distance(sample, c) for _, sample in samples]
    boost = ReadBias(model)
    lines, rows = [f"{args.adapter}: {len(samples)} samples ({args.samples} of each of {len(DATA)} sources, "
                   f"validation generators, seed {args.seed}) at {args.max_length} tokens, bfloat16, eager attention",
                   f"{'setting':>16} " + " ".join(f"{name:>14}" for name in ("open", "queue", "global"))
                   + "   global by source"], []
    try:
        with torch.inference_mode():
            for setting in settings:
                boost.setting, scored = setting, []
                for _, sample in samples:
                    boost.chunk, boost.layout = 0, None
                    boost.chunks = -(-len(sample.input_ids) // c)  # right-aligned chunks, the last one the answer's
                    scored.append(score(model, sample))
                    if boost.chunk != boost.chunks:
                        raise RuntimeError(f"{boost.chunk} chunks ran, {boost.chunks} expected: 'last' would miss")
                groups = distance_groups(scored, distances)
                means = {name: sum(s[0] for s in g) / len(g) for name, g in groups.items() if g}
                per_source = {}
                for spec in DATA:
                    g = [s for (sp, _), s, d in zip(samples, scored, distances)
                         if sp == spec and d is not None and d >= 2]
                    per_source[spec] = sum(s[0] for s in g) / len(g) if g else float("nan")
                name = "none" if setting[3] == 0 else f"{setting[0]}:{setting[1]}-{setting[2]}:{setting[3]:g}"
                rows.append({"setting": name, "by_distance": means, "global_by_source": per_source,
                             "per_sample": scored})
                lines.append(f"{name:>16} " + " ".join(f"{means.get(k, float('nan')):14.3f}"
                                                       for k in ("open", "queue", "global"))
                             + "   " + " ".join(f"{v:.3f}" for v in per_source.values()))
                print(lines[-1] if len(rows) > 1 else "\n".join(lines), flush=True)
    finally:
        boost.close()
    if args.out:
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        result = {"command": " ".join(sys.argv), "date_utc": now, "adapter": args.adapter, "data": DATA, "distances": distances, "rows": rows}
        write_text(args.out, json.dumps(result, indent=1))
        write_text(args.out.with_suffix(".txt"), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
