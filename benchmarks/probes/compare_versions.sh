#!/usr/bin/env bash
# Time the prefill and decode ops of two corey checkouts on one GPU, in one run, interleaved.
# Usage: benchmarks/probes/compare_versions.sh BASELINE_DIR NEW_DIR OUT_DIR
# (BASELINE_DIR e.g. from `git archive <commit> corey_compile | tar -x -C BASELINE_DIR`)
set -euo pipefail
base=$1 new=$2 out=$3
probe=benchmarks/probes/kernel_versions.py
mkdir -p "$out"
# ptxas takes ~30 s per prefill kernel: fill Triton's cache for every (version, dtype) in parallel first.
for version in "$base" "$new"; do
  for dtype in float16 bfloat16 float32; do
    python "$probe" --corey "$version" --compile-only --dtypes "$dtype" &
  done
done
wait
for round in 1 2; do
  python "$probe" --corey "$base" --label before --out "$out/before_$round.json"
  python "$probe" --corey "$new" --label after --out "$out/after_$round.json"
done
python "$probe" --compare "$out"/before_*.json "$out"/after_*.json | tee "$out/compare.txt"
