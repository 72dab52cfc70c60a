#!/usr/bin/env bash
# Watch the general adapter learn without looking at the test split: a few suite tasks on the validation split
# (training's templates, names and text, in prompts training never drew) at 2,048 tokens, twice the longest training
# prompt, 50% depth, 5 trials each. A checkpoint is exported first (docs/experiments/export_checkpoint.py).
#
#   docs/experiments/probe_general.sh ADAPTER|runs/general/general-g1/checkpoint-N OUT [EXTRA EVAL OPTIONS]
set -euo pipefail
FROM=${1:?usage: probe_general.sh ADAPTER|CHECKPOINT OUT [EXTRA EVAL OPTIONS]}
OUT=${2:?usage: probe_general.sh ADAPTER|CHECKPOINT OUT [EXTRA EVAL OPTIONS]}
shift 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PASSKEY=$(cd "$HERE/../.." && pwd)/src/cometlm/adapters/smollm2-135m-passkey
PYTHON=${PYTHON:-python}
if [[ -f $FROM/state.json ]]; then  # a training checkpoint: its trainable tensors over the run's starting model
  [[ -f $OUT/adapter/comet_config.json ]] || "$PYTHON" "$HERE/export_checkpoint.py" "$FROM" --like "$PASSKEY" --out "$OUT/adapter"
  FROM=$OUT/adapter
fi
for task in babilong-qa1 babilong-qa2 ruler-niah-single ruler-niah-multikey ruler-vt user-qa agent-qa; do
  cometlm eval "$task" --split validation --comet "$FROM" --lengths 2048 --depths 50 --trials 5 --seed 0 --dtype float32 \
    --no-progress --out "$OUT/$task" "$@" | tail -n 1 | sed "s/^/$task /"
done
