#!/usr/bin/env bash
# The README's test command, and what CI runs (.ci/run): every test of the workspace, with the
# outside references some of them compare against fetched first, so that they run for real:
#
#   - gguf-py 0.19.0 and numpy, for the GGUF interop tests (tern-gguf, tern-convert): the
#     interpreter in TERN_PYTHON, else python3 if it has them, else a virtualenv in the cache;
#   - llama.cpp's reference vocabularies, for the tokenizer conformance test (tern-model's
#     tests/gguf_tokenizer.rs): the ggml-vocab-* files of the llama-cpp-python 0.3.36 sdist
#     (~75 MB, checked by sha256), unless TERN_VOCAB_DIR is set;
#   - the official openai Python client 3.63.0, for tern-serve's client test: the interpreter in
#     TERN_OPENAI_PYTHON, else a virtualenv in the cache;
#   - Chromium, chromedriver and selenium 4.51.0, for tern-serve's chat page test: the Debian
#     packages chromium and chromium-driver (apt-get, when root and they are missing), selenium
#     from the interpreter in TERN_BROWSER_PYTHON, else a virtualenv in the cache.
#
# All are cached under ${TERN_CACHE_DIR:-~/.cache/tern}, so only the first run downloads.
# The tests build in the release profile: after the README's first command
# (`cargo run --release -p tern-cli -- run ...`) they reuse that build instead of compiling
# the workspace a second time in the test profile.
#
# Arguments go to `cargo test` in place of --workspace (e.g. `scripts/test.sh -p tern-model`).
# When something cannot be fetched (offline), the tests that need it say SKIPPED and are
# listed at the end; under CI=true they fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${TERN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tern}"
mkdir -p "$cache"

# Whether interpreter $1 has the gguf-py the interop tests were written against, and numpy.
has_gguf_py() {
  "$1" -c 'import importlib.metadata as m, numpy; assert m.version("gguf") == "0.19.0"' \
    >/dev/null 2>&1
}

# fetch_sdist NAME VERSION SHA256 DEST: a source archive from the package index pip uses
# (PIP_INDEX_URL, else PyPI), checked against its sha256. Not `pip download`, which would build
# the package's build dependencies (cmake, ninja) from source just to read its metadata.
fetch_sdist() {
  python3 - "$@" <<'PY'
import hashlib, html, os, re, sys, urllib.parse, urllib.request

name, version, sha256, dest = sys.argv[1:]
page_url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + f"/{name}/"
page = urllib.request.urlopen(page_url, timeout=60).read().decode()
want = f"{name.replace('-', '_')}-{version}.tar.gz"
for href in re.findall(r'href="([^"]+)"', page):
    url = urllib.parse.urljoin(page_url, html.unescape(href).split("#")[0])
    if url.rsplit("/", 1)[-1] == want:
        break
else:
    sys.exit(f"{want} is not in {page_url}")
data = urllib.request.urlopen(url, timeout=600).read()
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit(f"{want}: sha256 mismatch")
with open(dest, "wb") as f:
    f.write(data)
PY
}

# An interpreter given in TERN_PYTHON is used as it is.
py="${TERN_PYTHON:-python3}"
if [ -z "${TERN_PYTHON:-}" ] && ! has_gguf_py "$py"; then
  venv="$cache/gguf-py-0.19.0"
  if ! has_gguf_py "$venv/bin/python"; then
    echo "test.sh: installing gguf-py 0.19.0 and numpy into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" >/dev/null 2>&1 \
      && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
           gguf==0.19.0 numpy >/dev/null 2>&1 \
      || echo "test.sh: could not install gguf-py; the GGUF interop tests will skip"
  fi
  if has_gguf_py "$venv/bin/python"; then
    py="$venv/bin/python"
  fi
fi
export TERN_PYTHON="$py"

# cached_venv VAR PACKAGE==VERSION MODULE WHAT: unless $VAR is set, a virtualenv in the cache
# with the package, and $VAR exported as its interpreter (the tests that need it skip without).
cached_venv() {
  local var=$1 pkg=$2 module=$3 what=$4 env
  [ -z "${!var:-}" ] || return 0
  env="$cache/${pkg/==/-}"
  if ! "$env/bin/python" -c "import $module" >/dev/null 2>&1; then
    echo "test.sh: installing ${pkg/==/ } into $env"
    rm -rf "$env"
    python3 -m venv "$env" >/dev/null 2>&1 \
      && "$env/bin/python" -m pip install --quiet --disable-pip-version-check "$pkg" \
           >/dev/null 2>&1 \
      || echo "test.sh: could not install $pkg; $what will skip"
  fi
  if "$env/bin/python" -c "import $module" >/dev/null 2>&1; then
    export "$var=$env/bin/python"
  fi
}

# The official openai client, for tern-serve's client test (crates/tern-serve/tests/openai_client.rs).
cached_venv TERN_OPENAI_PYTHON openai==3.63.0 openai "the openai client test"

# Headless Chromium driven by selenium, for the chat page test (crates/tern-serve/tests/chat_page.rs):
# Debian's chromium and chromium-driver, and selenium (4.51.0: the newest whose dependencies
# the package index here resolves; 4.52.0 wants a certifi newer than the index has).
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } \
   && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test.sh: installing chromium and chromium-driver (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      chromium chromium-driver; } >/dev/null 2>&1 \
    || echo "test.sh: could not install chromium; the browser test will skip"
fi
cached_venv TERN_BROWSER_PYTHON selenium==4.51.0 selenium "the browser test"

if [ -z "${TERN_VOCAB_DIR:-}" ]; then
  vocab="$cache/llama-cpp-python-0.3.36"
  if [ ! -f "$vocab/models/ggml-vocab-llama-bpe.gguf.out" ]; then
    echo "test.sh: fetching llama.cpp's reference vocabularies (llama-cpp-python 0.3.36 sdist)"
    tmp=$(mktemp -d)
    sdist="$tmp/llama_cpp_python-0.3.36.tar.gz"
    if fetch_sdist llama-cpp-python 0.3.36 \
         832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e "$sdist" \
       && tar xzf "$sdist" -C "$tmp" --wildcards '*/vendor/llama.cpp/models/ggml-vocab-*'; then
      mkdir -p "$vocab"
      rm -rf "$vocab/models"
      mv "$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp/models" "$vocab/models"
    else
      echo "test.sh: could not fetch them; the tokenizer conformance tests will skip"
    fi
    rm -rf "$tmp"
  fi
  if [ -d "$vocab/models" ]; then
    export TERN_VOCAB_DIR="$vocab/models"
  fi
fi

# Tests that cannot run append a line here (tern_testutil::skip).
skips=$(mktemp)
trap 'rm -f "$skips"' EXIT
export TERN_SKIP_LOG="$skips"

if [ $# -eq 0 ]; then
  set -- --workspace
fi
cargo test --release "$@"

if [ -s "$skips" ]; then
  echo
  echo "test.sh: $(wc -l <"$skips") test(s) passed without checking what they are for:"
  sed 's/^/  SKIPPED /' "$skips"
fi
