#!/usr/bin/env python3
"""Interop checks between tern-gguf and gguf-py (pip install gguf==0.19.0 numpy).

  gguf_interop.py write OUT.gguf   write a small GGUF with gguf-py: every KV type, F32/F16/BF16/
                                   Q8_0/Q4_0/Q4_K/Q6_K/TQ1_0/TQ2_0 tensors, and for each
                                   quantized tensor X an F32 tensor "X.expected" holding gguf-py's
                                   own dequantization (tern must read the same values). The
                                   committed fixture crates/tern-gguf/tests/fixtures/gguf_py_small.gguf
                                   was made with this command.
  gguf_interop.py check IN.gguf    read a file tern wrote: check the metadata against KVS_TERN, and
                                   that gguf-py's dequantization of every tensor X equals tern's,
                                   which tern stored next to it as the F32 tensor "X.deq".
  gguf_interop.py model IN.gguf DIR  read a model file (tern convert): write DIR/fields.json
                                   (every key with gguf-py's contents and value type, every
                                   tensor's type and shape) and, for each tensor X, DIR/X.f32:
                                   gguf-py's dequantization as raw little-endian f32. The Rust
                                   side (crates/tern-convert/tests/interop.rs) compares them
                                   with tern's reading of the same file.

Run by hand, or from `cargo test -p tern-gguf --test interop` (skipped when gguf is missing;
set TERN_PYTHON to an interpreter that has it).
"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as T

# The metadata of both directions; tern's side is crates/tern-gguf/tests/common/mod.rs::all_kv.
KVS_COMMON = [
    ("t.u8", 200, T.UINT8, None),
    ("t.i8", -100, T.INT8, None),
    ("t.u16", 60000, T.UINT16, None),
    ("t.i16", -30000, T.INT16, None),
    ("t.u32", 4_000_000_000, T.UINT32, None),
    ("t.i32", -2_000_000_000, T.INT32, None),
    ("t.f32", 1.5e-5, T.FLOAT32, None),
    ("t.bool", True, T.BOOL, None),
    ("t.string", "héllo ▁world", T.STRING, None),
    ("t.u64", 2**64 - 2, T.UINT64, None),
    ("t.i64", -(2**63) + 1, T.INT64, None),
    ("t.f64", -2.5e300, T.FLOAT64, None),
    ("a.u8", [0, 1, 255], T.ARRAY, T.UINT8),
    ("a.i8", [-128, 0, 127], T.ARRAY, T.INT8),
    ("a.u16", [1, 65535], T.ARRAY, T.UINT16),
    ("a.i16", [-32768, 5], T.ARRAY, T.INT16),
    ("a.u32", [7, 2**32 - 1], T.ARRAY, T.UINT32),
    ("a.i32", [-1, 2, 3], T.ARRAY, T.INT32),
    ("a.f32", [0.0, -1.25, 3.5e10], T.ARRAY, T.FLOAT32),
    ("a.bool", [True, False, True], T.ARRAY, T.BOOL),
    ("a.string", ["<s>", "", "Ġthe"], T.ARRAY, T.STRING),
    ("a.u64", [2**64 - 1], T.ARRAY, T.UINT64),
    ("a.i64", [-(2**63), 0], T.ARRAY, T.INT64),
    ("a.f64", [1e-300, 2.0], T.ARRAY, T.FLOAT64),
]
# gguf-py cannot write empty arrays; nested arrays get their element types inferred.
KVS_PY = KVS_COMMON + [("a.nested", [["a b", "c d"], ["e"], [1, 2]], T.ARRAY, T.ARRAY)]
KVS_TERN = KVS_COMMON + [("a.empty", [], T.ARRAY, T.FLOAT32)]
ARCH = "bitnet-b1.58"


def rng_blocks(qtype, n, seed):
    """Random block bytes with finite f16 scales (so values compare equal)."""
    r = np.random.default_rng(seed)
    bs, bb = gguf.GGML_QUANT_SIZES[qtype]
    b = r.integers(0, 256, size=(n // bs, bb), dtype=np.uint8)
    scale_at = {Q.Q4_0: [0], Q.Q8_0: [0], Q.Q4_K: [0, 2], Q.Q6_K: [208]}[qtype]
    for o in scale_at:
        d = (0.01 + r.random(n // bs)).astype(np.float16)
        b[:, o:o + 2] = d.view(np.uint8).reshape(-1, 2)
    return b.reshape(1, -1)


def write(path):
    w = gguf.GGUFWriter(path, ARCH)
    for k, v, vt, st in KVS_PY:
        w.add_key_value(k, v, vt, sub_type=st)
    r = np.random.default_rng(0)
    w.add_tensor("f32", (np.arange(8, dtype=np.float32).reshape(2, 4) * 0.5 - 1.0))
    w.add_tensor("f16", np.array([0.1, -2.0, 65504.0], dtype=np.float16))
    quantized = {}
    src = r.standard_normal((2, 32)).astype(np.float32)
    quantized["bf16"] = (src, Q.BF16)
    quantized["q8_0"] = (src, Q.Q8_0)
    quantized["q4_0"] = (src[:1], Q.Q4_0)
    tern = (r.integers(-1, 2, size=(2, 256)) * 0.0625).astype(np.float32)
    quantized["tq1_0"] = (tern, Q.TQ1_0)
    quantized["tq2_0"] = (tern, Q.TQ2_0)
    noisy = r.standard_normal((1, 512)).astype(np.float32)
    quantized["tq1_0.noisy"] = (noisy, Q.TQ1_0)
    quantized["tq2_0.noisy"] = (noisy, Q.TQ2_0)
    for name, (x, qt) in quantized.items():
        q = gguf.quants.quantize(x, qt)
        w.add_tensor(name, q, raw_dtype=qt)
        w.add_tensor(name + ".src", x)
        w.add_tensor(name + ".expected", gguf.quants.dequantize(q, qt).astype(np.float32))
    for name, qt, seed in [("q4_k", Q.Q4_K, 1), ("q6_k", Q.Q6_K, 2)]:
        b = rng_blocks(qt, 256, seed)
        w.add_tensor(name, b, raw_dtype=qt)
        w.add_tensor(name + ".expected", gguf.quants.dequantize(b, qt).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def same(got, want, vt, st, key):
    if vt == T.ARRAY:
        assert len(got) == len(want), (key, got, want)
        for g, x in zip(got, want):
            same(g, x, st, None, key)
    elif vt == T.FLOAT32:
        assert np.float32(got) == np.float32(want), (key, got, want)
    else:
        assert got == want, (key, got, want)


def check(path):
    rd = gguf.GGUFReader(path)
    for k, v, vt, st in KVS_TERN:
        f = rd.fields.get(k)
        assert f is not None, f"missing key {k}"
        assert f.types[0] == vt, (k, f.types)
        if vt == T.ARRAY:
            assert f.types[-1] == st or not v, (k, f.types)
        same(f.contents(), v, vt, st, k)
    assert rd.fields["general.architecture"].contents() == ARCH
    assert "a.nested" in rd.fields
    tensors = {t.name: t for t in rd.tensors}
    checked = 0
    for name, t in tensors.items():
        deq = tensors.get(name + ".deq")
        if deq is None:
            continue
        mine = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).ravel()
        theirs = np.asarray(deq.data, dtype=np.float32).ravel()
        assert mine.shape == theirs.shape, (name, mine.shape, theirs.shape)
        assert np.array_equal(mine, theirs), (name, np.abs(mine - theirs).max())
        assert list(t.shape) == list(deq.shape), (name, t.shape, deq.shape)
        checked += 1
    kinds = sorted({tensors[n].tensor_type.name for n in tensors if n + ".deq" in tensors})
    assert {"TQ1_0", "TQ2_0"} <= set(kinds), kinds
    print(f"ok: {len(KVS_TERN)} keys, {checked} tensors ({', '.join(kinds)}) match gguf-py {path}")


def model(path, out_dir):
    import json
    import os

    rd = gguf.GGUFReader(path)
    fields = {}
    for k, f in rd.fields.items():
        if k.startswith("GGUF."):
            continue
        fields[k] = {"type": f.types[0].name, "value": f.contents()}
    tensors = {}
    for t in rd.tensors:
        deq = gguf.quants.dequantize(t.data, t.tensor_type).astype("<f4").ravel()
        with open(os.path.join(out_dir, t.name + ".f32"), "wb") as fh:
            fh.write(deq.tobytes())
        tensors[t.name] = {"type": t.tensor_type.name, "shape": [int(x) for x in t.shape]}
    with open(os.path.join(out_dir, "fields.json"), "w") as fh:
        json.dump({"fields": fields, "tensors": tensors}, fh)
    print(f"ok: gguf-py read {len(fields)} keys and {len(tensors)} tensors of {path}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "model":
        model(sys.argv[2], sys.argv[3])
    elif len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        sys.exit(__doc__)
    else:
        (write if sys.argv[1] == "write" else check)(sys.argv[2])
