#!/usr/bin/env bash
# The paper's Table 1 in miniature (docs/experiments.md): at two sizes, b1.58 QAT vs the FP
# baseline vs PTQ-ternary and PTQ-4bit of the FP model, equal tokens, validation perplexity on
# the SOTU hold-out (2001-2021) and on LAMBADA passages (scripts/fetch_eval_data.py).
# Usage: scripts/experiments.sh [SIZES...]   (default: small base); results: runs/table1.jsonl
set -euo pipefail
tern=${TERN:-target/release/tern}
sizes=${*:-small base}
lambada=$(python3 scripts/fetch_eval_data.py)
windows=${EVAL_WINDOWS:-256}
for size in $sizes; do
  for kind in b158 fp; do
    run=runs/sotu-$size-$kind
    if [ ! -f "$run/checkpoints/.done" ]; then
      if ls "$run"/checkpoints/step-*.safetensors >/dev/null 2>&1; then
        "$tern" train -o "$run" --resume
      else
        rm -rf "$run"
        "$tern" train -c "configs/sotu-$size-$kind.toml" -o "$run"
      fi
      touch "$run/checkpoints/.done"
    fi
  done
  for kind in b158 fp; do
    run=runs/sotu-$size-$kind
    ptqs=none
    [ "$kind" = fp ] && ptqs="none ternary int4"
    for ptq in $ptqs; do
      "$tern" train eval "$run" --ptq "$ptq" --windows "$windows" --json >> runs/table1.jsonl
      "$tern" train eval "$run" --ptq "$ptq" --windows "$windows" --data "$lambada" --json >> runs/table1.jsonl
    done
  done
done
"$tern" plot runs/sotu-*-b158 runs/sotu-*-fp -o runs/loss.png
