#!/usr/bin/env python
"""Export one training checkpoint (not only a run's last) as an adapter folder, to start the next phase from it.

The checkpoint holds the trainable tensors only, so the model they load into is rebuilt from the model the run
started from (`--like`, the run's `--comet`; any saved model with the same CoMeT config and LoRA works).

    .venv/bin/python docs/experiments/export_checkpoint.py runs/passkey-v2d/checkpoint-200 \
        --like runs/passkey-v2b/final --out runs/v2d-200
"""

import argparse
from pathlib import Path

from cometlm import CometForCausalLM
from cometlm.training.checkpoint import load_checkpoint
from cometlm.training.config import TrainConfig
from cometlm.training.loop import export_model, prepare_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("checkpoint", help="a checkpoint-N folder of a cometlm train run in LoRA mode")
parser.add_argument("--like", required=True, help="the model the run started from (its --comet)")
parser.add_argument("--out", required=True, type=Path, help="the adapter folder to write")
args = parser.parse_args()
model = CometForCausalLM.from_pretrained(args.like)
prepare_model(model, TrainConfig(output_dir=str(args.out), mode="lora"))
info = load_checkpoint(args.checkpoint, model)
export_model(model.eval(), args.out, "lora")
print(f"step {info.step} of {info.path} -> {args.out}")
