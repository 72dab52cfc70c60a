#!/usr/bin/env bash
# The issue-5 measurements still to run, in two lanes of one CPU thread each: on the 2-core CPU two one-thread
# jobs side by side do about 1.8x the work of one two-thread job (measured in session 9). Every step resumes
# where it stopped, also in a later session after `docs/experiments/carry.py restore`.
#
#   docs/experiments/comparison_lanes.sh a   the comparison's evaluations: before each baseline's, those of the
#                                            ablations whose training has finished (so that a finished ablation
#                                            can ship first); then the ablations' training, as lane b
#   docs/experiments/comparison_lanes.sh b   the ablations' training (recipes/passkey-smollm2.sh: global-only,
#                                            temp-only, no-gate; not those already shipped), then the same
#                                            evaluations as lane a
# A lane with nothing left to do waits while the other lane trains an ablation, and evaluates it when it is done.
#
# Each evaluation (one method on one task: recipes/compare-smollm2.sh --only NAME/TASK) and each ablation's training
# holds a lock while it runs, and a lane skips what the other lane holds, so the two share the work and never write
# the same results.
# Run each with nohup (logs in runs/lane-a.log, runs/lane-b.log):
#   setsid nohup docs/experiments/comparison_lanes.sh a >> runs/lane-a.log 2>&1 &
# A running bash reads its script as it goes: change this file only by replacing it (git, mv), never in place.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PATH=$PWD/.venv/bin:$PATH OMP_NUM_THREADS=1
VARIANTS=(global-only temp-only no-gate)
TASKS=(passkey niah ppl)
BASELINES=(comet no-memory full full-lora truncated truncated-lora sliding-window-lora sliding-window)
mkdir -p runs/locks

evaluate() {  # evaluate NAME TASK [MODEL_DIR]: one evaluation of the comparison, unless done or the other lane's
  local name=$1 task=$2 status=0
  local summary=runs/compare/$task/$name/$task.json
  if [[ -f $summary ]] && python3 -c 'import json, sys; sys.exit(not json.load(open(sys.argv[1]))["complete"])' \
      "$summary"; then
    return 0
  fi
  local args=(runs/compare)
  if [[ $# -ge 3 ]]; then args+=("$3" --models-only); fi
  locked "$name-$task" recipes/compare-smollm2.sh "${args[@]}" --only "$name/$task" -- --threads 1
}

locked() {  # locked LOCK COMMAND...: runs COMMAND holding runs/locks/LOCK, unless the other lane holds it
  local lock=$1 status=0
  shift
  flock -n -E 75 "runs/locks/$lock" "$@" || status=$?
  if [[ $status == 75 ]]; then
    echo "== $lock: the other lane is on it"
  elif [[ $status != 0 ]]; then
    return "$status"
  fi
}

train() {  # each ablation's training, unless shipped (carry.py no longer keeps its runs) or the other lane's
  local variant
  for variant in "${VARIANTS[@]}"; do
    if [[ -d src/cometlm/adapters/smollm2-135m-passkey-$variant ]]; then
      echo "== $variant: shipped, not trained again"
      continue
    fi
    locked "train-$variant" recipes/passkey-smollm2.sh "runs/abl-$variant" "$variant" -- --threads 1
  done
}

training_elsewhere() {  # whether the other lane is training an ablation
  local variant
  for variant in "${VARIANTS[@]}"; do
    if ! flock -n "runs/locks/train-$variant" true; then return 0; fi
  done
  return 1
}

ablations() {  # the evaluations of every ablation whose training has finished
  local variant task  # not the caller's: baselines() calls this inside its own loop over tasks
  for variant in "${VARIANTS[@]}"; do
    local model=runs/abl-$variant/passkey-v2g/final
    if [[ -f $model/comet_config.json ]]; then
      for task in "${TASKS[@]}"; do evaluate "comet-$variant" "$task" "$model"; done
    fi
  done
}

baselines() {  # each baseline's evaluations, each after those of the ablations that finished training by then
  for name in "${BASELINES[@]}"; do
    for task in "${TASKS[@]}"; do ablations; evaluate "$name" "$task"; done
  done
}

echo "== lane ${1:?usage: comparison_lanes.sh a|b} started $(date -u '+%F %H:%M') UTC"
case $1 in
  a) ablations; baselines; train ;;
  b) train; ablations; baselines ;;
  *) echo "unknown lane '$1': a or b" >&2; exit 2 ;;
esac
ablations
while training_elsewhere; do
  sleep 300
  ablations
done
echo "== lane $1 finished $(date -u '+%F %H:%M') UTC"
