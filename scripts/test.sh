#!/usr/bin/env bash
# The README's test command, and what CI runs (.ci/run): every test of the workspace, with the
# outside references some of them compare against fetched first, so that they run for real:
#
#   - gguf-py 0.19.0 and numpy, for the GGUF interop tests (tern-gguf, tern-convert): used from
#     TERN_PYTHON or python3 when they import, else installed into a virtualenv in the cache;
#   - llama.cpp's reference vocabularies, for the tokenizer conformance test (tern-model's
#     tests/gguf_tokenizer.rs): the ggml-vocab-* files of the llama-cpp-python 0.3.36 sdist
#     (~75 MB, checked by sha256), unless TERN_VOCAB_DIR is set.
#
# Both are cached under ${TERN_CACHE_DIR:-~/.cache/tern}, so only the first run downloads.
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

has_gguf_py() { "$1" -c 'import gguf, numpy' >/dev/null 2>&1; }

py="${TERN_PYTHON:-python3}"
if ! has_gguf_py "$py"; then
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

if [ -z "${TERN_VOCAB_DIR:-}" ]; then
  vocab="$cache/llama-cpp-python-0.3.36"
  if [ ! -f "$vocab/models/ggml-vocab-llama-bpe.gguf.out" ]; then
    echo "test.sh: fetching llama.cpp's reference vocabularies (llama-cpp-python 0.3.36 sdist)"
    tmp=$(mktemp -d)
    if python3 -m pip download --quiet --disable-pip-version-check --no-deps \
         --no-binary :all: llama-cpp-python==0.3.36 -d "$tmp" >/dev/null 2>&1 \
       && echo "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e  $tmp/llama_cpp_python-0.3.36.tar.gz" \
         | sha256sum --check --quiet \
       && tar xzf "$tmp/llama_cpp_python-0.3.36.tar.gz" -C "$tmp" \
         --wildcards '*/vendor/llama.cpp/models/ggml-vocab-*'; then
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
