#!/usr/bin/env bash
# Interleaved A/B of two tern binaries on the engine and kernel benchmarks, for a change that
# must not move speed: each round runs A then B (then B then A) so that drifts in the host's
# bandwidth hit both alike. Run alone on the machine (serialised on /tmp/bench.lock).
#   scripts/ab_bench.sh OLD_TERN NEW_TERN [ROUNDS] > ab.jsonl
set -euo pipefail
a=$1; b=$2; rounds=${3:-3}
one() {
  local tag=$1 bin=$2
  for shape in 700m 2b4t; do
    flock /tmp/bench.lock "$bin" bench model --shape "$shape" --prompt 128 --gen 64 --reps 3 --json \
      | sed "s/^{/{\"binary\":\"$tag\",/"
  done
  flock /tmp/bench.lock "$bin" bench kernels --quick --models 2b4t --tokens 1,64 --kernels tern2,f16 --json \
    | sed "s/^{/{\"binary\":\"$tag\",/"
}
for r in $(seq "$rounds"); do
  if (( r % 2 )); then one A "$a"; one B "$b"; else one B "$b"; one A "$a"; fi
done
