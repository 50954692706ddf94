#!/bin/bash
# The upstream llama.cpp check of docs/formats.md ("Conversions"): convert small models with
# `tern convert`, run llama.cpp greedy from token ids (greedy.c, linked against libllama) and
# tern on the same file, and compare greedy tokens and the last position's logits.
#
#   LLAMA=/path/to/llama.cpp (source tree with build/bin/libllama.so) [BITNET=/path/to/BitNet] \
#     scripts/llama_cpp_check/run.sh WORKDIR
set -euo pipefail
W=${1:?work dir}; L=${LLAMA:?set LLAMA to a built llama.cpp tree}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cargo build -q -p tern-cli --manifest-path "$ROOT/Cargo.toml"
T=${CARGO_TARGET_DIR:-$ROOT/target}/debug/tern
mkdir -p "$W"
TERN_CONVERT_EXPORT=$W cargo test -q --manifest-path "$ROOT/Cargo.toml" -p tern-convert \
    --test roundtrip -- --ignored export_models_for_llama_cpp_check >/dev/null
gcc -O2 -o "$W/greedy" "$ROOT/scripts/llama_cpp_check/greedy.c" -I"$L/include" -I"$L/ggml/include" \
    -L"$L/build/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$L/build/bin"
cd "$W"
compare() { # MODEL.gguf N "ids"
    ./greedy "$1" "$2" $3 2>/dev/null >ll.out
    "$T" logits "$1" --prompt-ids "$3" --out tern_logits.st -t 1 2>/dev/null
    local tg; tg=$("$T" run "$1" --prompt-ids "$3" -n "$2" --temp 0 --print-ids -t 1 2>/dev/null | tr -d '\n')
    python3 - "$1" "$tg" <<'PY'
import sys, json, struct, numpy as np
m, tg = sys.argv[1], sys.argv[2]
lines = open("ll.out").read().split("\n")
ll = np.array([float(x) for x in lines[0].split()[1:]])
lg = " ".join(lines[1].split()[1:])
b = open("tern_logits.st", "rb").read(); h = struct.unpack("<Q", b[:8])[0]; hd = json.loads(b[8:8 + h])
s, e = hd["logits"]["data_offsets"]
t = np.frombuffer(b[8 + h + s:8 + h + e], dtype="<f4").reshape(hd["logits"]["shape"])[-1].astype(np.float64)
same = "same" if lg.split() == tg.split() else "DIFFERENT"
print(f"| {m} | {lg} | {tg.strip()} | {same} | {np.linalg.norm(ll - t) / np.linalg.norm(t):.2e} |")
PY
}
P1="1 40 71 99 5 200 17"; P2="1 17 200 43 99 5 128 255 64 7 150 33"
echo "| file | llama.cpp greedy | tern greedy | | logits rel L2 |"
for m in synthetic_silu synthetic_relu2; do for ty in tq2_0 tq1_0 f16; do
    "$T" convert $m $m-$ty.gguf --type $ty 2>/dev/null; compare $m-$ty.gguf 16 "$P1"; done; done
for m in bitnet_1bitllm_f32 bitnet_packed llama_dense_f16; do for ty in tq2_0 f16; do
    "$T" convert $m $m-$ty.gguf --type $ty 2>/dev/null; compare $m-$ty.gguf 16 "$P2"; done; done

# bitnet.cpp (optional): BITNET=/path/to/BitNet with build/ made for the x86 I2_S path. Its fork
# (2024-10) has the older llama.h API and only arch `bitnet`, so only SiLU models are compared.
if [ -n "${BITNET:-}" ]; then
    sed -e 's/llama_model_load_from_file(argv\[1\], mp)/llama_load_model_from_file(argv[1], mp)/' \
        -e 's/llama_init_from_model(m, cp)/llama_new_context_with_model(m, cp)/' \
        -e 's/llama_vocab_n_tokens(llama_model_get_vocab(m))/llama_n_vocab(m)/' \
        -e 's/llama_batch_get_one(ids, np)/llama_batch_get_one(ids, np, 0, 0)/' \
        -e 's/llama_batch_get_one(&t, 1)/llama_batch_get_one(\&t, 1, np + k, 0)/' \
        -e 's/llama_model_free(m)/llama_free_model(m)/' "$ROOT/scripts/llama_cpp_check/greedy.c" >greedy_old.c
    BL=$BITNET/build/3rdparty/llama.cpp
    gcc -O2 -o greedy greedy_old.c -I"$BITNET/3rdparty/llama.cpp/include" \
        -I"$BITNET/3rdparty/llama.cpp/ggml/include" -L"$BL/src" -L"$BL/ggml/src" -lllama -lggml \
        -Wl,-rpath,"$BL/src:$BL/ggml/src"
    echo "bitnet.cpp:"
    "$T" convert synthetic_silu synthetic_silu-i2_s.gguf --type i2_s 2>/dev/null
    compare synthetic_silu-i2_s.gguf 16 "$P1"
    "$T" convert bitnet_1bitllm_f32 bitnet_1bitllm_f32-i2_s.gguf --type i2_s 2>/dev/null
    compare bitnet_1bitllm_f32-i2_s.gguf 16 "$P2"
fi
