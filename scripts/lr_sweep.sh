#!/usr/bin/env bash
# Short learning-rate sweep on the small SOTU configs (docs/experiments.md): 120 steps each,
# the same schedule shape compressed, final validation loss reported per run.
# Usage: scripts/lr_sweep.sh [RUNS_DIR]   (default runs/sweep)
set -euo pipefail
out=${1:-runs/sweep}
tern=${TERN:-target/release/tern}
mkdir -p "$out"
specs=${SPECS:-b158:1.5e-3 b158:3e-3 b158:6e-3 b158:1.2e-2 fp:5e-4 fp:1e-3 fp:2e-3 fp:4e-3}
for spec in $specs; do
  kind=${spec%%:*}; lr=${spec#*:}
  cfg="$out/$kind-$lr.toml"
  sed -e "s/^lr = .*/lr = $lr/" -e "s/^warmup_steps = .*/warmup_steps = 12/" \
      -e "s/^eval_every = .*/eval_every = 120/" -e "s/^save_every = .*/save_every = 120/" \
      "configs/sotu-small-$kind.toml" > "$cfg"
  rm -rf "$out/$kind-$lr"
  "$tern" train -c "$cfg" -o "$out/$kind-$lr" --steps 120 2>&1 | grep -E "validation" | tail -1 \
    | sed "s|^|$kind lr=$lr: |"
done
