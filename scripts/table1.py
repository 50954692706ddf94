#!/usr/bin/env python3
"""Markdown for docs/experiments.md from runs/table1.jsonl (scripts/experiments.sh)."""
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1] if len(sys.argv) > 1 else "runs/table1.jsonl")]
table = {}
for r in rows:
    run = r["run"].rstrip("/").split("/")[-1]           # sotu-small-b158
    size, kind = run.split("-")[1], run.split("-")[2]
    name = {("b158", "none"): "b1.58 QAT", ("fp", "none"): "FP (f32)",
            ("fp", "ternary"): "PTQ ternary of FP", ("fp", "int4"): "PTQ 4-bit (g32) of FP"}[(kind, r["ptq"])]
    where = "sotu" if r["data"] == "validation split" else "lambada"
    table.setdefault((size, name), {})[where] = r
print("| size | model | SOTU 2001-2021 ppl | SOTU bpb | LAMBADA ppl | LAMBADA bpb |")
print("|---|---|---|---|---|---|")
for (size, name), d in table.items():
    s, l = d.get("sotu", {}), d.get("lambada", {})
    f = lambda x, k, p: f"{x[k]:.{p}f}" if k in x else "-"
    print(f"| {size} | {name} | {f(s,'val_ppl',1)} | {f(s,'val_bpb',3)} | {f(l,'val_ppl',1)} | {f(l,'val_bpb',3)} |")
