#!/usr/bin/env bash
# The training recipe of the shipped adapter (src/cometlm/adapters/smollm2-135m-passkey), phase after phase, for
# CoMeT or one of its ablations. Every phase resumes when the script is rerun (a finished phase is skipped), so
# a recipe that takes hours on a CPU can be stopped and continued at will.
#
#   recipes/passkey-smollm2.sh OUT [VARIANT] [-- EXTRA TRAIN OPTIONS]
#
#   VARIANT  comet (default), global-only (no temporary memory), temp-only (no global memory), no-gate (the global
#            update overwrites). Only the first phase builds the model; later phases continue from the last.
#   EXTRA    passed to every phase, e.g. --threads 2, --bf16, or the GPU's --batch-size.
#
# The adapter ends in OUT/passkey-v2g/final: phase v2g made the shipped adapter (src/cometlm/adapters/
# smollm2-135m-passkey), 1,000 steps at half phase v2f's learning rate (see docs/EXPERIMENTS.md). Phases that were
# stopped early when the recipe was found replay with --stop-at (the schedule still spans --max-steps). The first
# three phases were trained before the passkey target included the period after the key, so they replay with
# passkey:period=0 (the same prompts, the key alone as target).
set -euo pipefail
OUT=${1:?usage: recipes/passkey-smollm2.sh OUT [comet|global-only|temp-only|no-gate] [-- EXTRA OPTIONS]}
shift
VARIANT=comet
if [[ $# -ge 1 && $1 != -- ]]; then VARIANT=$1; shift; fi
if [[ ${1:-} == -- ]]; then shift; fi
EXTRA=("$@")
COMETLM=${COMETLM:-cometlm}

case $VARIANT in
  comet)       MODEL=(--global-slots 16 --temp-stride 8 --temp-capacity 16 --gate-bias 0 6) ;;
  global-only) MODEL=(--global-slots 16 --temp-stride 0 --temp-capacity 0 --gate-bias 0 6) ;;
  temp-only)   MODEL=(--global-slots 0 --temp-stride 8 --temp-capacity 16) ;;
  no-gate)     MODEL=(--global-slots 16 --temp-stride 8 --temp-capacity 16 --no-gate) ;;
  *) echo "unknown variant '$VARIANT': use comet, global-only, temp-only or no-gate" >&2; exit 2 ;;
esac

# One variant per OUT: its phases would otherwise be taken for another variant's.
mkdir -p "$OUT"
if [[ -f $OUT/variant && $(cat "$OUT/variant") != "$VARIANT" ]]; then
  echo "$OUT holds the '$(cat "$OUT/variant")' variant, not '$VARIANT': use another OUT" >&2; exit 2
fi
echo "$VARIANT" > "$OUT/variant"

COMMON=(--batch-size 1 --save-every 25 --log-every 1 --mode lora)
OLD_PLAN=(--chunk-augmentation p_fixed=0 p_right_aligned=0.8 p_uniform=0.1 p_random=0.1 p_boundary=0 min_chunk=32)
NEW_PLAN=(--chunk-augmentation p_fixed=0.3 p_right_aligned=0.4 p_uniform=0.1 p_random=0.2 p_boundary=0 min_chunk=32)
LATE_DATA=(passkey:depth=0-40@0.6 passkey@0.2 lm:bible@0.1 lm:essays@0.1)

phase() {  # phase NAME FROM ARGS...: one `cometlm train`, skipped once NAME/final exists
  local name=$1 from=$2; shift 2
  if [[ -f $OUT/$name/final/comet_config.json ]]; then
    echo "== $name: done ($OUT/$name/final)"; return
  fi
  local start=()
  [[ $from != none ]] && start=(--comet "$OUT/$from/final")
  echo "== $name ($(date -u +%H:%M) UTC)"
  # ${a[@]+"${a[@]}"}: an empty array under set -u, also on bash < 4.4
  "$COMETLM" train ${start[@]+"${start[@]}"} --output-dir "$OUT/$name" "${COMMON[@]}" "$@" ${EXTRA[@]+"${EXTRA[@]}"}
}

phase passkey-v1 none --chunk-size 128 "${MODEL[@]}" --attention-sink \
  --data passkey:period=0@0.85 lm:essays@0.15 --max-length 1024 --max-steps 450 --stop-at 181 --lr 3e-4 \
  --warmup-steps 20 --seed 0 "${OLD_PLAN[@]}"
phase passkey-v2a passkey-v1 --data passkey:period=0@0.85 lm:essays@0.15 --max-length 512 --max-steps 300 --lr 4e-4 \
  --warmup-steps 10 --seed 1 "${OLD_PLAN[@]}"
phase passkey-v2b passkey-v2a --data passkey:period=0@0.85 lm:essays@0.15 --max-length 512 --max-steps 500 --lr 8e-4 \
  --warmup-steps 10 --seed 2 "${OLD_PLAN[@]}"
phase passkey-v2d passkey-v2b --data passkey@0.85 lm:essays@0.15 --max-length 1024 --max-steps 600 --stop-at 200 \
  --lr 5e-4 --warmup-steps 10 --seed 4 "${NEW_PLAN[@]}"
phase passkey-v2e passkey-v2d --data passkey:depth=0-85@0.7 passkey@0.1 lm:bible@0.1 lm:essays@0.1 \
  --max-length 1024 --max-steps 500 --stop-at 160 --lr 4e-4 --warmup-steps 10 --seed 5 "${NEW_PLAN[@]}"
phase passkey-v2f passkey-v2e --data "${LATE_DATA[@]}" --max-length 512 --max-steps 800 --lr 4e-4 \
  --warmup-steps 10 --seed 6 "${NEW_PLAN[@]}"
phase passkey-v2g passkey-v2f --data "${LATE_DATA[@]}" --max-length 512 --max-steps 1000 --lr 2e-4 \
  --warmup-steps 10 --seed 7 "${NEW_PLAN[@]}"
echo "== adapter: $OUT/passkey-v2g/final"
