#!/usr/bin/env bash
# Every method side by side on passkey, needle-in-a-haystack and perplexity over SmolLM2-135M-Instruct, the same
# prompts and documents for each, then one table (issue 5):
#
#   recipes/compare-smollm2.sh OUT [MODEL_DIR ...] [--models-only] [--only NAME/TASK ...] [-- EXTRA EVAL OPTIONS]
#
#   comet           the shipped adapter (src/cometlm/adapters/smollm2-135m-passkey)
#   no-memory       the same weights with both memories off (plain chunking)
#   full            the base model, full attention, at the lengths that fit its 8k window
#   truncated       the base model on the last 8k tokens
#   sliding-window  the base model with StreamingLLM's cache (4 attention sinks + the most recent tokens)
#   *-lora          full, truncated and sliding-window again with the shipped adapter's LoRA (memories off): the
#                   adapter was fine-tuned on the prompt formats and on other parts of the Bible and essays, so
#                   these rows separate what the memory contributes from what the fine-tuning did.
#                   sliding-window-lora runs perplexity only: on passkey and NIAH it sees what truncated-lora
#                   sees (the last 8k tokens, plus 4 sinks) at several times the cost.
#   MODEL_DIR       comet with another trained model, e.g. an ablation trained by `recipes/passkey-smollm2.sh
#                   OUT2 global-only` (OUT2/passkey-v2g/final); its results go to OUT/TASK/comet-VARIANT,
#                   VARIANT read from OUT2/variant (else the folder's name)
#   --models-only   run only the MODEL_DIR rows (e.g. while another process runs the baselines into the same OUT)
#   --only NAME/TASK  run only these evaluations (repeatable; e.g. --only sliding-window/niah, or comet-global-only/ppl
#                   with its MODEL_DIR), and leave the table to a later run: several processes can share one OUT when
#                   each runs other evaluations
#   EXTRA           passed to every evaluation, e.g. --threads 2
#
# Perplexity is scored on 2 held-out Bible windows of 32k tokens, so that the baselines' 8k window is exceeded;
# full attention, which cannot read past its window, scores 2 windows of 8k instead (the table says which).
# Every evaluation resumes when the script is rerun (finished trials and documents are kept), and the table is
# written to OUT/table.md (and drawn in OUT/table.png) at the end. On a 2-core CPU a comet grid to 32k takes
# about 45 minutes per task.
set -euo pipefail
USAGE="usage: recipes/compare-smollm2.sh OUT [MODEL_DIR ...] [--models-only] [--only NAME/TASK ...]"
USAGE+=" [-- EXTRA EVAL OPTIONS]"
OUT=${1:?$USAGE}
shift
MODELS=()
MODELS_ONLY=0
ONLY=()
while [[ $# -ge 1 && $1 != -- ]]; do
  case $1 in
    --models-only) MODELS_ONLY=1 ;;
    --only)
      if [[ ! ${2:-} =~ ^[a-z0-9-]+/(passkey|niah|ppl)$ ]]; then
        echo "--only takes NAME/TASK, TASK one of passkey, niah, ppl (got '${2:-}')" >&2; exit 2
      fi
      ONLY+=("$2"); shift ;;
    *) MODELS+=("$1") ;;
  esac
  shift
done
if [[ ${1:-} == -- ]]; then shift; fi
EXTRA=("$@")
COMETLM=${COMETLM:-cometlm}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHIPPED=$(cd "$HERE/.." && pwd)/src/cometlm/adapters/smollm2-135m-passkey

LENGTHS=(1024 4096 16384 32768)
FULL_LENGTHS=(1024 4096)  # a prompt and its answer must fit the 8,192-token window
GRID=(--trials 3 --seed 0 --no-progress --dtype float32)  # the reported tables are float32
PPL=(--corpus bible --documents 2 --seed 0 --no-progress --dtype float32)

run() {  # run NAME TASKS MODEL_ARGS...: the tasks ("passkey niah ppl" or a part) for one method
  local name=$1 tasks=$2; shift 2
  local lengths=("${LENGTHS[@]}") ppl_length=32768
  if [[ " $* " == *" --method full "* ]]; then lengths=("${FULL_LENGTHS[@]}"); ppl_length=8192; fi
  for task in $tasks; do
    if [[ ${#ONLY[@]} -gt 0 && " ${ONLY[*]} " != *" $name/$task "* ]]; then continue; fi
    echo "== $name $task ($(date -u +%H:%M) UTC)"
    if [[ $task == ppl ]]; then
      "$COMETLM" eval ppl "$@" "${PPL[@]}" --length $ppl_length --out "$OUT/ppl/$name" ${EXTRA[@]+"${EXTRA[@]}"}
    else
      "$COMETLM" eval "$task" "$@" --lengths "${lengths[@]}" "${GRID[@]}" --out "$OUT/$task/$name" \
        ${EXTRA[@]+"${EXTRA[@]}"}
    fi
  done
}

for dir in ${MODELS[@]+"${MODELS[@]}"}; do
  [[ -f $dir/comet_config.json ]] || { echo "$dir is not a saved CoMeT model (no comet_config.json)" >&2; exit 2; }
done

ALL="passkey niah ppl"
if [[ $MODELS_ONLY == 0 ]]; then
  run comet "$ALL" --comet "$SHIPPED"
  run no-memory "$ALL" --comet "$SHIPPED" --method no-memory
  run full "$ALL" --method full
  run full-lora "$ALL" --comet "$SHIPPED" --method full
  run truncated "$ALL" --method truncated
  run truncated-lora "$ALL" --comet "$SHIPPED" --method truncated
  run sliding-window-lora ppl --comet "$SHIPPED" --method sliding-window
  run sliding-window "$ALL" --method sliding-window
fi
for dir in ${MODELS[@]+"${MODELS[@]}"}; do
  run "comet-$(cat "$dir/../../variant" 2>/dev/null || basename "$dir")" "$ALL" --comet "$dir"
done
if [[ ${#ONLY[@]} -eq 0 ]]; then
  "$COMETLM" eval table "$OUT"/passkey/* "$OUT"/niah/* "$OUT"/ppl/* --out "$OUT/table.md" --plot "$OUT/table.png"
fi
