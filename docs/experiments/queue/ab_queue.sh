#!/usr/bin/env bash
# The queue A/B fixed in session 29 (docs/EXPERIMENTS.md) after g6's rule: does the temporary memory carry a fact
# from the previous chunk better with more beacons, or with LoRA on more of the backbone? 100 steps from g6's final
# adapter on g6's mixture and length (384 tokens: facts in the open chunk or the one the queue holds), seed 108 (the
# same samples for every arm):
#   a  control: g6's sizes and LoRA (C=128, a beacon every 8 tokens, K=16, LoRA on q_proj and v_proj);
#   b  a beacon every 4 tokens and K=32 (the queue still one chunk deep, twice the rows; no new parameters);
#   c  LoRA also on k_proj, o_proj, gate_proj, up_proj and down_proj (the new ones start as no change).
# Each arm is then scored at its own sizes by the answer's teacher-forced loss, by the fact's distance in chunks
# (answer_loss.py), on samples of the training split's generators drawn with seed 901 (never a training seed).
#
#   THREADS=2 docs/experiments/queue/ab_queue.sh G6_FINAL OUT ARM [EXTRA TRAIN OPTIONS]     ARM: a, b or c
set -euo pipefail
USAGE="usage: ab_queue.sh G6_FINAL OUT a|b|c [EXTRA TRAIN OPTIONS]"
FROM=${1:?$USAGE}
OUT=${2:?$USAGE}
ARM=${3:?$USAGE}
shift 3
PYTHON=${PYTHON:-python}
COMETLM=${COMETLM:-cometlm}
THREADS=${THREADS:-1}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# g6's phase of recipes/general-smollm2.sh: its options and its mixture (ENDED there).
COMMON=(--batch-size 8 --save-every 10 --log-every 1 --mode lora --dtype bfloat16)
PLAN=(--chunk-augmentation p_fixed=0.3 p_right_aligned=0.4 p_uniform=0.1 p_random=0.2 p_boundary=0 min_chunk=32)
ENDED=(
  passkey:digits=3-9@0.20
  ruler-niah-single:eos=1@0.15 ruler-niah-single:haystack=bible,values=uuid,eos=1@0.08
  ruler-niah-single:haystack=noise,keys=number,values=word,eos=1@0.05
  babilong-qa1:eos=1@0.15 user-qa:eos=1@0.14 agent-qa:eos=1@0.17
  lm:bible@0.03 lm:essays@0.03
)
mkdir -p "$OUT"
start=$OUT/start-$ARM
case $ARM in
  a) start=$FROM; sizes=128:16 ;;
  b) sizes=128:32
     if [[ ! -f $start/comet_config.json ]]; then
       rm -rf "$start.tmp"; cp -r "$FROM" "$start.tmp"
       "$PYTHON" - "$start.tmp/comet_config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["comet"]["temp_stride"], config["comet"]["temp_capacity"] = 4, 32
json.dump(config, open(path, "w"), indent=2)
PY
       mv "$start.tmp" "$start"
     fi ;;
  c) sizes=128:16
     if [[ ! -f $start/comet_config.json ]]; then
       rm -rf "$start"
       "$PYTHON" "$HERE/widen_lora.py" "$FROM" --out "$start" \
         --targets q_proj k_proj v_proj o_proj gate_proj up_proj down_proj
     fi ;;
  *) echo "ARM is a, b or c" >&2; exit 2 ;;
esac
if [[ ! -f $OUT/arm-$ARM/final/comet_config.json ]]; then
  "$COMETLM" train --comet "$start" --output-dir "$OUT/arm-$ARM" "${COMMON[@]}" --data "${ENDED[@]}" \
    --max-length 384 --max-steps 100 --lr 3e-4 --warmup-steps 10 --seed 108 --loss-weighting sample \
    --gate-weight-lr-multiplier 0.01 "${PLAN[@]}" --threads "$THREADS" "$@"
fi
"$PYTHON" "$HERE/../sizes/answer_loss.py" "$OUT/arm-$ARM/final" --sizes "$sizes" --max-length 384 \
  --data passkey:digits=3-9 ruler-niah-single:depth=0-100 ruler-niah-single:haystack=bible,values=uuid,depth=0-100 \
  ruler-niah-single:haystack=noise,keys=number,values=word,depth=0-100 babilong-qa1:depth=0-70 agent-qa \
  --samples 48 --seed 901 --threads "$THREADS" --out "$OUT/arm-$ARM/answer_loss.json" | tee "$OUT/arm-$ARM/answer_loss.txt"
