#!/usr/bin/env python3
"""Markdown tables from `tern bench kernels --json` output (JSON Lines on stdin).

    cargo run --release -p tern-cli -- bench kernels --json > kernels.jsonl
    python3 scripts/kernels_table.py < kernels.jsonl
"""
import json
import sys

rows = [json.loads(line) for line in sys.stdin if line.strip()]
bw = {r["threads"]: r["gb_per_s"] for r in rows if r["kernel"] == "read_bandwidth"}
print("Read bandwidth (start of run): " + ", ".join(f"{t} thread(s) {g:.1f} GB/s" for t, g in sorted(bw.items())))
print()

mat = [r for r in rows if "speedup_vs_f16" in r or r["kernel"] in ("f16", "f32")]
mat = [r for r in mat if not r["kernel"].startswith("call_overhead") and r["kernel"] != "read_bandwidth"]

def fmt(v, spec=".2f", suffix="x"):
    return "-" if v is None else f"{v:{spec}}{suffix}"

print("### Decode (n = 1): time per call, share of read bandwidth, speedups")
print()
print("| m x k | threads | kernel | us | GB/s | % of bw | vs f16 | vs f16 at roofline | vs f32 |")
print("|---|---|---|---|---|---|---|---|---|")
for r in mat:
    if r["n"] != 1:
        continue
    print(f"| {r['m']}x{r['k']} | {r['threads']} | {r['kernel']} | {r['seconds']*1e6:.1f} | {r['gb_per_s']:.1f} | "
          f"{100*r['bandwidth_fraction']:.0f}% | {fmt(r.get('speedup_vs_f16'))} | {fmt(r.get('speedup_vs_f16_roofline'))} | {fmt(r.get('speedup_vs_f32'))} |")
print()
print("### Prefill / batched decode (n > 1): GOPS (2mkn / s) and speedups")
print()
print("| m x k | n | threads | kernel | ms | GOPS | vs f16 | vs f32 |")
print("|---|---|---|---|---|---|---|---|")
for r in mat:
    if r["n"] == 1:
        continue
    print(f"| {r['m']}x{r['k']} | {r['n']} | {r['threads']} | {r['kernel']} | {r['seconds']*1e3:.2f} | {r['gops']:.0f} | "
          f"{fmt(r.get('speedup_vs_f16'))} | {fmt(r.get('speedup_vs_f32'))} |")
print()
for r in rows:
    if r["kernel"].startswith("call_overhead"):
        print(f"- call overhead ({r['kernel']}, {r['m']}x{r['k']}, n=1, hot caches), {r['threads']} thread(s): {r['seconds']*1e6:.1f} us")
