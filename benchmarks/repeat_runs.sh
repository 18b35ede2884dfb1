#!/usr/bin/env bash
# Between-run variation of ADP's realised LLM speedup at keep 0.3 on the scaled model (RESULTS.md §3):
# the same short command N times per dtype, each a complete interleaved run with its own JSON.
set -euo pipefail
N=${N:-4}
OUT=${OUT:-benchmarks/results/repeat}
mkdir -p "$OUT"
for dtype in bf16 fp32; do
  for i in $(seq 1 "$N"); do
    PYTHONPATH=src python -m vla_adp bench --model scaled --dtype "$dtype" --pruners adp adp:scoring=folded \
      --keep 0.3 --reps 8 --warmup 2 --no-memory --clock "${CLOCK:-thread}" --scoring fused folded \
      --json "$OUT/${dtype}_${i}.json" > /dev/null
  done
done
