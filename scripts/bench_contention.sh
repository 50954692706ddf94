#!/usr/bin/env bash
# Decode speed with one of the two cores taken by another process (a busy loop), tern and
# llama.cpp side by side on the same TQ2_0 file (docs/engine.md, "Sharing the machine"):
# each alone, then each beside the busy loop, 2 threads, tg64, median of 3.
#   LLAMA_BENCH=/path/to/llama-bench scripts/bench_contention.sh [MODEL.gguf] [OUT.jsonl]
# The default model is the 2b4t file scripts/bench_serve.sh writes.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-${TERN_BENCH_DIR:-/tmp/tern-bench}/2b4t.gguf}
out=${2:-docs/bench-contention.jsonl}
tern=${TERN:-target/release/tern}
llama=${LLAMA_BENCH:-llama-bench}
[ -f "$model" ] || { echo "$model missing: see scripts/bench_serve.sh"; exit 1; }
: > "$out"
busy=
trap '[ -n "$busy" ] && kill $busy 2>/dev/null' EXIT
run() { # LABEL CONTENDED
  local t l
  t=$("$tern" bench model "$model" --prompt 1 --gen 64 --reps 3 --threads 2 --json 2>/dev/null \
      | python3 -c 'import sys,json; print([json.loads(l) for l in sys.stdin if "tg64" in l][0]["tokens_per_s"])')
  l=$("$llama" -m "$model" -t 2 -p 0 -n 64 -r 3 -o json 2>/dev/null \
      | python3 -c 'import sys,json; print(json.load(sys.stdin)[0]["avg_ts"])')
  echo "{\"engine\":\"tern\",\"contended\":$2,\"tg64_tokens_per_s\":$t}" | tee -a "$out"
  echo "{\"engine\":\"llama.cpp\",\"contended\":$2,\"tg64_tokens_per_s\":$l}" | tee -a "$out"
}
exec 9>/tmp/bench.lock
flock 9
run alone false
sh -c 'while :; do :; done' &
busy=$!
run busy true
