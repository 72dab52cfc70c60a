#!/bin/bash
# Is the shipped float32 decode tail the allocator's? benchmarks/decode_steps.py alternately with glibc's defaults
# and with the heap kept (no trimming, mmap only above 32 MiB, glibc's largest threshold; 64 MiB top pad),
# ROUNDS times each.
# Run it with nothing else on the machine (pause background jobs with SIGSTOP around it).
#   bash docs/experiments/decode-tail/malloc_ab.sh [ROUNDS] [DTYPE]
set -euo pipefail
ROUNDS=${1:-2}
DTYPE=${2:-float32}
PY=${PYTHON:-.venv/bin/python}
for round in $(seq "$ROUNDS"); do
  echo "== round $round, glibc defaults ($(date -u +%H:%M:%S) UTC)"
  "$PY" benchmarks/decode_steps.py --threads 2 --dtype "$DTYPE" 2>&1 | grep -v -i "warn\|Loading"
  echo "== round $round, heap kept ($(date -u +%H:%M:%S) UTC)"
  MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TOP_PAD_=67108864 \
    "$PY" benchmarks/decode_steps.py --threads 2 --dtype "$DTYPE" 2>&1 | grep -v -i "warn\|Loading"
done
