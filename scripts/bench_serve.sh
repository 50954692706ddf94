#!/usr/bin/env bash
# tern serve and llama-server side by side (docs/serving.md): the same TQ2_0 file (random
# ternary weights of the 700m and 2b4t shapes, LLaMA-3 tokenizer, written by
# `tern convert --shape`), 2 threads each, an f16 KV cache each, `--parallel C` slots for C
# concurrent streaming clients (1, 4, 16, 64), each request a ~40-token prompt and 64 generated
# tokens (ignore_eos), measured by `tern bench serve`. Run alone on the machine (the timed
# part holds /tmp/bench.lock).
#
#   LLAMA_SERVER=/path/to/llama-server scripts/bench_serve.sh [OUT.jsonl]
#
# SHAPES, CLIENTS and GEN override the runs; TERN_SERVE_FLAGS adds flags to tern serve (e.g.
# "--head int8") and TERN_LABEL names those runs; NO_PEER=1 leaves llama-server out.
#
# Needs llama.cpp's ggml-vocab-llama-bpe.gguf (scripts/test.sh fetches it into
# ~/.cache/tern; or set TERN_VOCAB_DIR). Model files go to ${TERN_BENCH_DIR:-/tmp/tern-bench}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/bench-serve.jsonl}
llama=${LLAMA_SERVER:-llama-server}
tern=${TERN:-target/release/tern}
dir=${TERN_BENCH_DIR:-/tmp/tern-bench}
vocab=${TERN_VOCAB_DIR:-$HOME/.cache/tern/llama-cpp-python-0.3.36/models}/ggml-vocab-llama-bpe.gguf
shapes=${SHAPES:-700m 2b4t}
clients=${CLIENTS:-1 4 16 64}
gen=${GEN:-64}
flags=${TERN_SERVE_FLAGS:-}
label=${TERN_LABEL:-tern}
[ -x "$tern" ] || cargo build --release -p tern-cli
[ -n "${NO_PEER:-}" ] || command -v "$llama" >/dev/null \
  || { echo "llama-server not found (set LLAMA_SERVER, or NO_PEER=1)"; exit 1; }
[ -f "$vocab" ] || { echo "$vocab missing: run scripts/test.sh once, or set TERN_VOCAB_DIR"; exit 1; }
mkdir -p "$dir"
[ -n "${APPEND:-}" ] || : > "$out"
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null' EXIT

# wait_up PORT PID: until /health answers 200 (model loaded), or the process dies.
wait_up() {
  for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "server exited"; return 1; }
    sleep 0.5
  done
  return 1
}

# measure LABEL PORT PID C: one `tern bench serve` run, its JSON line tagged and appended.
measure() {
  flock /tmp/bench.lock "$tern" bench serve --url "127.0.0.1:$2" --pid "$3" --label "$1" \
    --concurrency "$4" --gen "$gen" --json \
    | sed "s/^{/{\"shape\":\"$shape\",/" | tee -a "$out"
}

for shape in $shapes; do
  f="$dir/$shape.gguf"
  [ -f "$f" ] || "$tern" convert --shape "$shape" --vocab-from "$vocab" "$f"
  for c in $clients; do
    "$tern" serve --model "bench=$f" --port 18601 --threads 2 --ctx 256 --parallel "$c" \
      --kv-type f16 --kv-budget 8GiB --max-queue 256 $flags 2>/dev/null &
    pid=$!
    wait_up 18601 $pid && { measure "$label" 18601 $pid "$c" || echo "tern: the run failed"; }
    kill $pid; wait $pid 2>/dev/null || true
    [ -n "${NO_PEER:-}" ] && continue
    # One HTTP thread per client and a few more (its default pool resets connections at 64).
    "$llama" -m "$f" --port 18602 -t 2 -tb 2 -np "$c" -c $((256 * c)) -ctk f16 -ctv f16 \
      --threads-http $((c + 4)) --log-disable >/dev/null 2>&1 &
    pid=$!
    wait_up 18602 $pid && { measure llama-server 18602 $pid "$c" || echo "llama-server: the run failed"; }
    kill $pid; wait $pid 2>/dev/null || true
  done
done

python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["shape"], r["clients"], r["label"]): r for r in rows}
print("| shape | clients | server | tok/s | llama-server tok/s | ratio | TTFT p50/p99 (ms) | llama TTFT p50/p99 | ITL p50/p99 (ms) | llama ITL p50/p99 | peak RSS GB (tern / llama) |")
print("|---|---:|---|---:|---:|---:|---|---|---|---|---|")
for (shape, c, label), t in by.items():
    if label == "llama-server":
        continue
    l = by.get((shape, c, "llama-server"))
    f = lambda r, k: f"{r[k + '_p50_s'] * 1e3:.0f} / {r[k + '_p99_s'] * 1e3:.0f}" if r else "-"
    g = lambda r, k: f"{r[k + '_p50_s'] * 1e3:.1f} / {r[k + '_p99_s'] * 1e3:.1f}" if r else "-"
    rss = lambda r: f"{r['server_peak_rss_bytes'] / 1e9:.2f}" if r and r.get("server_peak_rss_bytes") else "-"
    lt = l["output_tokens_per_s"] if l else float("nan")
    print(f"| {shape} | {c} | {label} | {t['output_tokens_per_s']:.1f} | {lt:.1f} | {t['output_tokens_per_s'] / lt:.2f}x | "
          f"{f(t, 'ttft')} | {f(l, 'ttft')} | {g(t, 'itl')} | {g(l, 'itl')} | {rss(t)} / {rss(l)} |")
PY
