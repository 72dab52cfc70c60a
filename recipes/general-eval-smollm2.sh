#!/usr/bin/env bash
# Every measurement issue 23 (point 2 and 3) asks of a general adapter for SmolLM2-135M-Instruct, on the test split,
# in float32 (the reported tables' dtype), then the verdict on each target (recipes/general_targets.py):
#
#   PATH=$PWD/.venv/bin:$PATH recipes/general-eval-smollm2.sh ADAPTER OUT [--only PART ...] [-- EXTRA EVAL OPTIONS]
#
#   (COMETLM and PYTHON default to the `cometlm` and `python` on PATH.)
#   suites   the task suites at 4k / 16k / 32k, 50% depth, 5 trials per cell (32k included): the adapter (comet), its
#            memories off (no-memory), full attention with its LoRA where the prompt fits the 8k window (full-lora,
#            4k), and the efficient baselines with CoMeT's cache, truncated-cache and sliding-window-cache
#            (recipes/suites-compare-smollm2.sh; ruler-cwe and ruler-fwe are not among the issue's targets)
#   passkey  the passkey grid at 4k / 16k / 32k, 5 depths x 5 trials
#   needles  the single needle in the other haystacks at 4k / 16k / 32k, 50% depth, 5 trials: the Bible and the
#            passkey filler (held-out regions: the test split) and a text file no training source reads (NEVER_SEEN,
#            by default Python's own reference-manual text, pydoc_data/topics.py); the essays are the suites' own
#   ppl      perplexity on the 2 held-out 32k-token Bible windows (seed 0, as docs/results/compare): the adapter, its
#            memories off, the sliding window with CoMeT's budget (4 sinks + 44 older tokens + a 128-token block,
#            with and without the adapter's LoRA) and the base model truncated to its last 8k (with and without the LoRA)
#   short    held-out one-chunk text against the base model (benchmarks/short_ppl.py)
#   million  BABILong-style QA1 at 1,000,000 tokens at depths 0, 50 and 100%, one trial each, with time and peak
#            memory (about an hour a trial on a 2-core CPU; a trial's read resumes after an interruption)
#
# Every part resumes when the script is rerun. With every part run, OUT/targets.md and OUT/targets.json say, target
# by target, what was measured, what the issue asks and whether it is met. Prompts of the suites are those of
# docs/results/suites (the same seeds and grid), so its baseline rows are the same measurements.
set -euo pipefail
USAGE="usage: recipes/general-eval-smollm2.sh ADAPTER OUT [--only PART ...] [-- EXTRA EVAL OPTIONS]"
ADAPTER=${1:?$USAGE}
OUT=${2:?$USAGE}
shift 2
[[ -f $ADAPTER/comet_config.json ]] || { echo "$ADAPTER is not a saved CoMeT adapter (no comet_config.json)" >&2
                                         exit 2; }
ADAPTER=$(cd "$ADAPTER" && pwd)
PARTS=(suites passkey needles ppl short million)
ONLY=()
while [[ $# -ge 1 && $1 != -- ]]; do
  case $1 in
    --only) [[ " ${PARTS[*]} " == *" ${2:-} "* ]] || { echo "--only takes one of: ${PARTS[*]}" >&2; exit 2; }
            ONLY+=("$2"); shift ;;
    *) echo "$USAGE" >&2; exit 2 ;;
  esac
  shift
done
if [[ ${1:-} == -- ]]; then shift; fi
EXTRA=("$@")
COMETLM=${COMETLM:-cometlm}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
NEVER_SEEN=${NEVER_SEEN:-$("$PYTHON" -c "import pydoc_data.topics as t; print(t.__file__)")}
[[ -f $NEVER_SEEN ]] || { echo "NEVER_SEEN: no text file at '$NEVER_SEEN'" >&2; exit 2; }
mkdir -p "$OUT"

LENGTHS=(--lengths 4096 16384 32768)
GRID=(--trials 5 --seed 0 --no-progress --dtype float32)
PPL=(--corpus bible --length 32768 --documents 2 --seed 0 --no-progress --dtype float32)
# CoMeT's 176 keys a token at most (16 global + 16 temporary rows, the sink, its chunk's 128 tokens and the 15 beacons
# before its last), as the sliding window's 4 sinks + 44 older tokens + its 128-token block
CACHE=(--window 44 --sink-tokens 4)
TASKS=(ruler-niah-single ruler-niah-multikey ruler-niah-multivalue ruler-niah-multiquery ruler-vt
       babilong-qa1 babilong-qa2 babilong-qa3 babilong-qa4 babilong-qa5 user-qa agent-qa)

wanted() { [[ ${#ONLY[@]} -eq 0 || " ${ONLY[*]} " == *" $1 "* ]]; }
say() { echo "== $* ($(date -u +%H:%M) UTC)"; }

if wanted suites; then
  picks=()
  for task in "${TASKS[@]}"; do picks+=(--tasks "$task"); done
  COMETLM=$COMETLM bash "$HERE/suites-compare-smollm2.sh" "$OUT/suites" --comet "$ADAPTER" \
    --only truncated-cache --only sliding-window-cache --only full-lora --only no-memory --only comet \
    "${picks[@]}" --trials-32k 5 ${EXTRA[@]+"--" "${EXTRA[@]}"}
fi
if wanted passkey; then
  say "comet passkey"
  "$COMETLM" eval passkey --comet "$ADAPTER" "${LENGTHS[@]}" --depths 0 25 50 75 100 "${GRID[@]}" \
    --out "$OUT/passkey/comet" ${EXTRA[@]+"${EXTRA[@]}"}
fi
if wanted needles; then
  for haystack in bible noise "file:$NEVER_SEEN"; do
    name=${haystack%%:*}
    say "comet ruler-niah-single on $haystack"
    "$COMETLM" eval ruler-niah-single --comet "$ADAPTER" --haystack "$haystack" "${LENGTHS[@]}" --depths 50 \
      "${GRID[@]}" --out "$OUT/needles/$name" ${EXTRA[@]+"${EXTRA[@]}"}
  done
fi
if wanted ppl; then
  ppl() {  # ppl NAME ARGS...
    local name=$1; shift
    say "$name ppl"
    "$COMETLM" eval ppl "$@" "${PPL[@]}" --out "$OUT/ppl/$name" ${EXTRA[@]+"${EXTRA[@]}"}
  }
  ppl comet --comet "$ADAPTER"
  ppl no-memory --comet "$ADAPTER" --method no-memory
  ppl sliding-window-cache-lora --comet "$ADAPTER" --method sliding-window "${CACHE[@]}"
  ppl sliding-window-cache --method sliding-window "${CACHE[@]}"
  ppl truncated-lora --comet "$ADAPTER" --method truncated
  ppl truncated --method truncated
fi
if wanted short; then
  say "short-input perplexity"
  if [[ ! -f $OUT/short-ppl.json ]]; then
    "$PYTHON" "$ROOT/benchmarks/short_ppl.py" --comet "$ADAPTER" --out "$OUT/short-ppl.json"
  fi
fi
if wanted million; then
  say "comet babilong-qa1 at 1,000,000 tokens"
  "$COMETLM" eval babilong-qa1 --comet "$ADAPTER" --lengths 1000000 --depths 0 50 100 --trials 1 --seed 0 \
    --no-progress --dtype float32 --out "$OUT/qa1-1m" ${EXTRA[@]+"${EXTRA[@]}"}
fi
if [[ ${#ONLY[@]} -eq 0 ]]; then
  "$PYTHON" "$HERE/general_targets.py" "$OUT" --out "$OUT/targets"
fi
