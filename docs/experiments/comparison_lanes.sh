#!/usr/bin/env bash
# The issue-5 measurements still to run, in two lanes of one CPU thread each: on the 2-core CPU two one-thread
# jobs side by side do about 1.8x the work of one two-thread job (measured in session 9). Every step resumes
# where it stopped, also in a later session after `docs/experiments/carry.py restore`.
#
#   docs/experiments/comparison_lanes.sh a   the evaluation of every ablation whose training has finished, the
#                                            comparison's baselines (recipes/compare-smollm2.sh), then the
#                                            ablations again (those that finished training meanwhile)
#   docs/experiments/comparison_lanes.sh b   the ablations' training (recipes/passkey-smollm2.sh): global-only,
#                                            temp-only, no-gate
#
# Run each with nohup (logs in runs/lane-a.log, runs/lane-b.log):
#   setsid nohup docs/experiments/comparison_lanes.sh a >> runs/lane-a.log 2>&1 &
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PATH=$PWD/.venv/bin:$PATH OMP_NUM_THREADS=1
VARIANTS=(global-only temp-only no-gate)
echo "== lane ${1:?usage: comparison_lanes.sh a|b} started $(date -u '+%F %H:%M') UTC"
case $1 in
  a)
    ablations() {
      for variant in "${VARIANTS[@]}"; do
        model=runs/abl-$variant/passkey-v2g/final
        if [[ -f $model/comet_config.json ]]; then
          recipes/compare-smollm2.sh runs/compare "$model" --models-only -- --threads 1
        fi
      done
    }
    ablations
    recipes/compare-smollm2.sh runs/compare -- --threads 1
    ablations ;;
  b)
    for variant in "${VARIANTS[@]}"; do
      recipes/passkey-smollm2.sh "runs/abl-$variant" "$variant" -- --threads 1
    done ;;
  *) echo "unknown lane '$1': a or b" >&2; exit 2 ;;
esac
echo "== lane $1 finished $(date -u '+%F %H:%M') UTC"
