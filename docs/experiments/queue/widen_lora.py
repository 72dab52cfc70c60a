#!/usr/bin/env python
"""A copy of a trained adapter with LoRA on more of the backbone's linear layers, the new ones starting as no change.

The adapter's own LoRA weights (e.g. on q_proj and v_proj) are kept as trained; every added target gets peft's
initialisation (A random, B zero), so the copy computes exactly what the adapter computes until it trains. Used by
the queue A/B of session 29 (docs/EXPERIMENTS.md): do the beacons compress a chunk better with LoRA on the keys,
the attention's output and the MLP too?

    .venv/bin/python docs/experiments/queue/widen_lora.py ADAPTER --targets q_proj k_proj v_proj o_proj \
        gate_proj up_proj down_proj --out NEW_ADAPTER
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from cometlm import CometForCausalLM
from cometlm.lora import apply_lora, load_lora_state_dict, lora_config, lora_state_dict
from cometlm.saving import LORA_FILE


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="a saved adapter folder trained with LoRA")
    parser.add_argument("--targets", nargs="+", required=True, help="every linear layer the copy's LoRA is on")
    parser.add_argument("--out", type=Path, required=True, help="the new adapter folder (must not exist)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new LoRA A matrices")
    args = parser.parse_args(argv)
    if not (args.adapter / LORA_FILE).is_file():
        parser.error(f"{args.adapter} has no {LORA_FILE}: nothing to widen")
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new folder")

    trained = CometForCausalLM.from_pretrained(args.adapter)
    layout, weights = lora_config(trained), lora_state_dict(trained)
    missing = sorted(set(layout["targets"]) - set(args.targets))
    if missing:
        parser.error(f"--targets must include the adapter's own LoRA targets {layout['targets']} (missing {missing})")
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "bare"
        shutil.copytree(args.adapter, bare)
        (bare / LORA_FILE).unlink()
        model = CometForCausalLM.from_pretrained(bare)  # the same CoMeT weights, no LoRA yet
    torch.manual_seed(args.seed)
    apply_lora(model, layout["rank"], layout["alpha"], layout["dropout"], args.targets)
    state = lora_state_dict(model)
    state.update(weights)  # the trained targets as they were; the new ones as initialised (B = 0)
    load_lora_state_dict(model, state)
    model.save_pretrained(args.out, adapter=True)
    added = len(state) - len(weights)
    print(f"{args.out}: LoRA on {sorted(args.targets)} ({added} new tensors, each new B zero); "
          f"{layout['targets']} as trained", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
