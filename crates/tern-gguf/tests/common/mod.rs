#![allow(dead_code)]
use tern_gguf::{GgmlType, GgufArray, GgufValue, GgufWriter};
use tern_kernels::rng::Rng;
use tern_kernels::TernaryMatrix;

pub use tern_testutil::TempDir;

/// One value of every metadata type, arrays of every element type and nested arrays.
pub fn all_kv() -> Vec<(String, GgufValue)> {
    use GgufArray as A;
    use GgufValue as V;
    let kv = vec![
        ("t.u8", V::U8(200)),
        ("t.i8", V::I8(-100)),
        ("t.u16", V::U16(60000)),
        ("t.i16", V::I16(-30000)),
        ("t.u32", V::U32(4_000_000_000)),
        ("t.i32", V::I32(-2_000_000_000)),
        ("t.f32", V::F32(1.5e-5)),
        ("t.bool", V::Bool(true)),
        ("t.string", V::String("héllo ▁world".into())),
        ("t.u64", V::U64(u64::MAX - 1)),
        ("t.i64", V::I64(i64::MIN + 1)),
        ("t.f64", V::F64(-2.5e300)),
        ("a.u8", V::Array(A::U8(vec![0, 1, 255]))),
        ("a.i8", V::Array(A::I8(vec![-128, 0, 127]))),
        ("a.u16", V::Array(A::U16(vec![1, 65535]))),
        ("a.i16", V::Array(A::I16(vec![-32768, 5]))),
        ("a.u32", V::Array(A::U32(vec![7, u32::MAX]))),
        ("a.i32", V::Array(A::I32(vec![-1, 2, 3]))),
        ("a.f32", V::Array(A::F32(vec![0.0, -1.25, 3.5e10]))),
        ("a.bool", V::Array(A::Bool(vec![true, false, true]))),
        (
            "a.string",
            V::Array(A::String(vec!["<s>".into(), "".into(), "Ġthe".into()])),
        ),
        ("a.u64", V::Array(A::U64(vec![u64::MAX]))),
        ("a.i64", V::Array(A::I64(vec![i64::MIN, 0]))),
        ("a.f64", V::Array(A::F64(vec![1e-300, 2.0]))),
        ("a.empty", V::Array(A::F32(vec![]))),
        (
            "a.nested",
            V::Array(A::Array(vec![
                A::String(vec!["a b".into(), "c d".into()]),
                A::String(vec!["e".into()]),
                A::I32(vec![1, 2]),
                A::Array(vec![A::U8(vec![9])]),
            ])),
        ),
        ("general.architecture", V::String("bitnet-b1.58".into())),
    ];
    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

pub fn ternary(rows: usize, cols: usize, seed: u64) -> TernaryMatrix {
    TernaryMatrix::random(rows, cols, 0.0625, &mut Rng::new(seed))
}

pub fn floats(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.unit_f32() * 2.0 - 1.0).collect()
}

/// Random block bytes whose f16 scales are finite (so dequantized values compare equal).
pub fn random_blocks(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let size = ty.byte_size(&[n]).unwrap();
    let mut b: Vec<u8> = (0..size).map(|_| (r.next_u64() & 0xff) as u8).collect();
    let (_, bb) = ty.block();
    let scale_at: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    for blk in b.chunks_exact_mut(bb) {
        for &o in scale_at {
            blk[o..o + 2]
                .copy_from_slice(&half::f16::from_f32(0.01 + (r.unit_f32())).to_le_bytes());
        }
    }
    b
}

/// A small valid file with every KV type and every tensor type.
pub fn sample_writer() -> GgufWriter<'static> {
    fill_sample(GgufWriter::new())
}

/// Every metadata type and tensor type of [`sample_writer`], added to `w`.
pub fn fill_sample(mut w: GgufWriter<'static>) -> GgufWriter<'static> {
    for (k, v) in all_kv() {
        w.add_kv(k, v).unwrap();
    }
    w.add_f32("f32", GgmlType::F32, &[4, 2], &floats(8, 1))
        .unwrap();
    w.add_f32("f16", GgmlType::F16, &[3], &floats(3, 2))
        .unwrap();
    w.add_f32("bf16", GgmlType::BF16, &[5], &floats(5, 3))
        .unwrap();
    w.add_f32("q8_0", GgmlType::Q8_0, &[32, 2], &floats(64, 4))
        .unwrap();
    for (name, ty, seed) in [
        ("q4_0", GgmlType::Q4_0, 5),
        ("q4_k", GgmlType::Q4_K, 6),
        ("q6_k", GgmlType::Q6_K, 7),
    ] {
        let n = ty.block().0;
        w.add_tensor(name, ty, &[n], random_blocks(ty, n, seed))
            .unwrap();
    }
    w.add_ternary("tq1_0", GgmlType::TQ1_0, &ternary(2, 256, 8))
        .unwrap();
    w.add_ternary("tq2_0", GgmlType::TQ2_0, &ternary(2, 256, 9))
        .unwrap();
    w.add_ternary("i2_s", GgmlType::I2_S, &ternary(2, 128, 10))
        .unwrap();
    w
}
