#!/usr/bin/env bash
# The A/B fixed in session 24 before g3's step-300 probe (docs/EXPERIMENTS.md): 40 steps from g3's final adapter on
# g3's mixture (seed 103, the same samples for both arms), arm A at g3's sizes (C=128, K=16, a beacon every 8 tokens),
# arm B a copy whose comet_config.json says a beacon every 4 tokens and K=32 (the queue still one chunk deep; neither
# size has parameters of its own). Each arm is then scored at its own sizes by the answer's teacher-forced loss on
# samples of the training split's generators drawn with seed 901 (never a training seed). Both arms weigh the loss
# by sample (`--loss-weighting sample`, as every phase from g4 on: the amendment of session 25, fixed before the
# step-300 probe).
#
#   docs/experiments/sizes/ab_stride.sh G3_FINAL OUT ARM [EXTRA TRAIN OPTIONS]     ARM: a or b
#
# The two arms can run at once in two processes (one thread each).
set -euo pipefail
FROM=${1:?usage: ab_stride.sh G3_FINAL OUT a|b [EXTRA TRAIN OPTIONS]}
OUT=${2:?usage: ab_stride.sh G3_FINAL OUT a|b [EXTRA TRAIN OPTIONS]}
ARM=${3:?usage: ab_stride.sh G3_FINAL OUT a|b [EXTRA TRAIN OPTIONS]}
shift 3
PYTHON=${PYTHON:-python}
COMETLM=${COMETLM:-cometlm}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# g3's phase of recipes/general-smollm2.sh: its options and its mixture (DIGITS there).
COMMON=(--batch-size 8 --save-every 10 --log-every 1 --mode lora --dtype bfloat16)
PLAN=(--chunk-augmentation p_fixed=0.3 p_right_aligned=0.4 p_uniform=0.1 p_random=0.2 p_boundary=0 min_chunk=32)
DIGITS=(
  passkey:digits=3-9@0.20
  ruler-niah-single@0.15 ruler-niah-single:haystack=bible,values=uuid@0.08
  ruler-niah-single:haystack=noise,keys=number,values=word@0.05
  babilong-qa1@0.15 user-qa@0.14 agent-qa@0.17
  lm:bible@0.03 lm:essays@0.03
)
case $ARM in
  a) start=$FROM; sizes=128:16 ;;
  b) start=$OUT/start-b; sizes=128:32
     if [[ ! -f $start/comet_config.json ]]; then
       mkdir -p "$OUT"; rm -rf "$start.tmp"; cp -r "$FROM" "$start.tmp"
       "$PYTHON" - "$start.tmp/comet_config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["comet"]["temp_stride"], config["comet"]["temp_capacity"] = 4, 32
json.dump(config, open(path, "w"), indent=2)
PY
       mv "$start.tmp" "$start"
     fi ;;
  *) echo "ARM is a or b" >&2; exit 2 ;;
esac
if [[ ! -f $OUT/arm-$ARM/final/comet_config.json ]]; then
  "$COMETLM" train --comet "$start" --output-dir "$OUT/arm-$ARM" "${COMMON[@]}" --data "${DIGITS[@]}" \
    --max-length 1024 --max-steps 40 --lr 3e-4 --warmup-steps 10 --seed 103 --loss-weighting sample "${PLAN[@]}" "$@"
fi
"$PYTHON" "$HERE/answer_loss.py" "$OUT/arm-$ARM/final" --sizes "$sizes" \
  --data babilong-qa1:depth=0-70 ruler-niah-single:depth=0-70 agent-qa --samples 24 --seed 901 \
  --out "$OUT/arm-$ARM/answer_loss.json"
