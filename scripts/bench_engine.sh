#!/usr/bin/env bash
# The engine's speed table (docs/engine.md): every shape with the f16 tied head and the int8
# head, plus the 3B dense f16 baseline, as JSON Lines, then the per-phase decode profile of
# each ternary shape. Run alone on the machine (timings serialise on /tmp/bench.lock).
#   scripts/bench_engine.sh [OUT.jsonl]     (default docs/bench-model-zen5-2c.jsonl)
set -euo pipefail
out=${1:-docs/bench-model-zen5-2c.jsonl}
tern=${TERN:-target/release/tern}
[ -x "$tern" ] || cargo build --release -p tern-cli
: > "$out"
run() { flock /tmp/bench.lock "$tern" bench model "$@"; }
for shape in 700m 2b4t 3b; do
  for head in f16 int8; do run --shape $shape --head $head --json >> "$out"; done
done
run --shape 3b --dense f16 --json >> "$out"
for shape in 700m 2b4t 3b; do
  echo "== $shape (f16 head)"; run --shape $shape --prompt 1 --gen 128 --profile | sed -n '/^profile/,$p'
done
