#!/usr/bin/env bash
# The measurements a general-adapter phase's rule reads at its end (docs/EXPERIMENTS.md fixes each phase's rule
# before it runs): the answer's loss by the fact's distance at each LENGTH (validation generators, seed 901, 48
# samples per source, bfloat16 as every earlier phase's), the gate table, and the 2,048-token probes. Validation
# split only; the test split is never read. Rerun after an interruption, it measures only what is missing (a
# length without its distance-LENGTH.json, the gate table, the probes), so it can also add a length later.
#
#   PYTHON=.venv/bin/python docs/experiments/phase_rule.sh ADAPTER OUT LENGTH... [-- EXTRA answer_loss.py OPTIONS]
#   e.g. docs/experiments/phase_rule.sh runs/general/general-g8/final docs/results/general-probes/g8-step-200 2048 1024
set -euo pipefail
ADAPTER=${1:?usage: phase_rule.sh ADAPTER OUT LENGTH...}
OUT=${2:?usage: phase_rule.sh ADAPTER OUT LENGTH...}
shift 2
LENGTHS=()
while [[ $# -gt 0 && $1 != -- ]]; do LENGTHS+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
[[ ${#LENGTHS[@]} -gt 0 ]] || { echo "give at least one LENGTH" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
for length in "${LENGTHS[@]}"; do
  [[ -f $OUT/distance-$length.json ]] && { echo "distance at $length: done ($OUT/distance-$length.json)"; continue; }
  "$PYTHON" "$HERE/sizes/answer_loss.py" "$ADAPTER" --sizes 128:16 --max-length "$length" \
    --data passkey:digits=3-9 ruler-niah-single:depth=0-100 ruler-niah-single:haystack=bible,values=uuid,depth=0-100 \
    ruler-niah-single:haystack=noise,keys=number,values=word,depth=0-100 \
    --samples 48 --seed 901 --threads "$THREADS" --out "$OUT/distance-$length.json" "$@" | tee "$OUT/distance-$length.txt"
done
if [[ ! -f $OUT/gates.txt ]]; then
  GATES=$(mktemp -d)
  "$PYTHON" "$HERE/reset_gates.py" "$ADAPTER" --out "$GATES/reset" | tee "$OUT/gates.txt.partial"
  rm -rf "$GATES"
  mv "$OUT/gates.txt.partial" "$OUT/gates.txt"
fi
if [[ ! -f $OUT/probe.txt ]]; then  # each task's evaluation keeps its finished trials, so a rerun resumes it
  PATH=$(dirname "$PYTHON"):$PATH "$HERE/probe_general.sh" "$ADAPTER" "$OUT" --threads "$THREADS" \
    | tee "$OUT/probe.txt.partial"
  mv "$OUT/probe.txt.partial" "$OUT/probe.txt"
fi
