//! Walks the codec table (`GgmlType::traits`): sizes agree with ggml and with what the reader
//! and writer accept, every quantizer round-trips within its documented error, and every
//! ternary type round-trips a `TernaryMatrix` exactly.

use half::f16;
use tern_gguf::{
    fork_type_name, quants, upstream_type_name, GgmlType, GgufFile, GgufWriter, TypeTraits,
};
use tern_kernels::rng::Rng;
use tern_kernels::TernaryMatrix;

/// ggml's `blck_size` / `type_size` (ggml.c `type_traits`; bitnet.cpp for I2_S), written out
/// independently of the table.
const GGML_SIZES: [(GgmlType, usize, usize); 10] = [
    (GgmlType::F32, 1, 4),
    (GgmlType::F16, 1, 2),
    (GgmlType::Q4_0, 32, 18),
    (GgmlType::Q8_0, 32, 34),
    (GgmlType::Q4_K, 256, 144),
    (GgmlType::Q6_K, 256, 210),
    (GgmlType::BF16, 1, 2),
    (GgmlType::TQ1_0, 256, 54),
    (GgmlType::TQ2_0, 256, 66),
    (GgmlType::I2_S, 4, 1),
];

fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.unit_f32()).collect()
}

#[test]
fn every_type_has_one_consistent_entry() {
    assert_eq!(GGML_SIZES.len(), GgmlType::ALL.len());
    for (ty, bs, bb) in GGML_SIZES {
        let t: &TypeTraits = ty.traits();
        assert_eq!(t.ty, ty);
        assert_eq!((t.block_size, t.type_size), (bs, bb), "{}", t.name);
        assert_eq!(ty.block(), (bs, bb));
        assert_eq!(ty.name(), t.name);
        // The table's names are ggml's names for these ids (I2_S: the bitnet.cpp fork's).
        let ggml_name = if ty == GgmlType::I2_S {
            fork_type_name(ty.id())
        } else {
            upstream_type_name(ty.id())
        };
        assert_eq!(ggml_name, Some(t.name));
        assert_eq!(
            ty.is_ternary(),
            matches!(ty, GgmlType::TQ1_0 | GgmlType::TQ2_0 | GgmlType::I2_S)
        );
        assert_eq!(t.tensor_tail.is_some(), ty == GgmlType::I2_S, "{}", t.name);
    }
}

/// A tensor of every type, of several rows, is written and read back with the table's size.
#[test]
fn block_and_type_sizes_agree_with_the_reader() {
    let mut w = GgufWriter::new();
    let mut want = Vec::new();
    for (i, ty) in GgmlType::ALL.into_iter().enumerate() {
        let t = ty.traits();
        // I2_S needs whole 128-value groups over the tensor; the others whole blocks per row.
        let ne0 = if ty == GgmlType::I2_S {
            128
        } else {
            t.block_size * 2
        };
        let dims = [ne0, 3];
        let size = (ne0 * 3 / t.block_size) * t.type_size + t.tensor_tail.unwrap_or(0);
        assert_eq!(ty.byte_size(&dims), Ok(size), "{}", t.name);
        let bytes: Vec<u8> = match &t.ternary {
            Some(codec) => {
                (codec.from_ternary)(&TernaryMatrix::random(3, ne0, 0.5, &mut Rng::new(i as u64)))
                    .unwrap()
            }
            // Zero bytes are a valid block of every dense type.
            None => vec![0; size],
        };
        assert_eq!(bytes.len(), size, "{}", t.name);
        let name = format!("t{i}");
        w.add_tensor(&name, ty, &dims, bytes.clone()).unwrap();
        // One byte short is refused by the writer.
        assert!(w
            .add_tensor(format!("{name}.short"), ty, &dims, bytes[1..].to_vec())
            .is_err());
        want.push((name, ty, dims, bytes));
        // A row that is not whole blocks is refused (I2_S only needs whole groups overall).
        if t.block_size > 1 && t.tensor_tail.is_none() {
            assert!(ty.byte_size(&[t.block_size + 1, 1]).is_err(), "{}", t.name);
        }
    }
    let f = GgufFile::from_bytes("mem", w.to_bytes()).unwrap();
    for (name, ty, dims, bytes) in want {
        let info = f.tensors().iter().find(|i| i.name == name).unwrap();
        assert_eq!((info.ty, info.size), (ty, bytes.len()), "{}", ty.name());
        let d = f.tensor(&name).unwrap();
        assert_eq!(d.bytes, &bytes[..]);
        assert_eq!(d.dims, &dims[..]);
        assert_eq!(d.to_f32().unwrap().len(), dims[0] * dims[1]);
    }
}

/// Half an f16 ulp at `v`: the error of storing a scale as f16 (subnormals below 2^-14 have a
/// fixed step of 2^-24).
fn f16_err(v: f32) -> f32 {
    (v.abs() * 2f32.powi(-11)).max(2f32.powi(-25))
}

/// The bound each `from_float` documents, for value `x` in a block whose largest magnitude is
/// `amax` (with a little slack for f32 arithmetic).
fn bound(ty: GgmlType, x: f32, amax: f32) -> f32 {
    let b = match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => f16_err(x),
        GgmlType::BF16 => x.abs() * 2f32.powi(-8),
        // d = amax / 127: d/2 from rounding, plus |q| <= 127 times the f16 error of d.
        GgmlType::Q8_0 => amax / 127.0 / 2.0 + 127.0 * f16_err(amax / 127.0),
        // d = amax: d/2 from rounding, plus |q| <= 1 times the f16 error of d.
        GgmlType::TQ1_0 | GgmlType::TQ2_0 => amax / 2.0 + f16_err(amax),
        // Checked as a relative L2 error instead.
        GgmlType::Q6_K => f32::INFINITY,
        t => panic!("{} has no quantizer in the table", t.name()),
    };
    b * (1.0 + 1e-5)
}

#[test]
fn every_quantizer_round_trips_within_its_error() {
    let mut with_quantizer = Vec::new();
    for ty in GgmlType::ALL {
        let t = ty.traits();
        let Some(from_float) = t.from_float else {
            assert!(quants::quantize(ty, &[0.0; 256]).is_err(), "{}", t.name);
            continue;
        };
        with_quantizer.push(ty);
        // Four rows of two blocks (at least 256 values), one of them scaled down hard.
        let block = t.block_size.max(256 / t.block_size.max(1));
        let n = 8 * block;
        let mut x = uniform(n, ty.id() as u64);
        x[..2 * block].iter_mut().for_each(|v| *v *= 1e-3);
        let bytes = from_float(&x).unwrap();
        assert_eq!(bytes, quants::quantize(ty, &x).unwrap());
        assert_eq!(Ok(bytes.len()), ty.byte_size(&[2 * block, 4]), "{}", t.name);
        let y = quants::dequantize(ty, &bytes, n).unwrap();
        assert_eq!(y.len(), n);
        for (xb, yb) in x.chunks(t.block_size).zip(y.chunks(t.block_size)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (&a, &b) in xb.iter().zip(yb) {
                assert!(
                    (a - b).abs() <= bound(ty, a, amax),
                    "{}: {a} -> {b}",
                    t.name
                );
            }
        }
        if ty == GgmlType::Q6_K {
            let err: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let norm: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
            assert!(
                (err / norm).sqrt() < 0.02,
                "Q6_K rel L2 {}",
                (err / norm).sqrt()
            );
        }
        // The writer quantizes with the same entry.
        let mut w = GgufWriter::new();
        w.add_f32("x", ty, &[2 * block, 4], &x).unwrap();
        let f = GgufFile::from_bytes("mem", w.to_bytes()).unwrap();
        assert_eq!(f.tensor("x").unwrap().bytes, &bytes[..]);
        // Not whole blocks: an error, not a panic (types with 1-value blocks have none).
        if t.block_size > 1 {
            assert!(from_float(&x[..t.block_size - 1]).is_err(), "{}", t.name);
        }
    }
    assert_eq!(
        with_quantizer,
        [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q8_0,
            GgmlType::Q6_K,
            GgmlType::BF16,
            GgmlType::TQ1_0,
            GgmlType::TQ2_0
        ]
    );
}

#[test]
fn ternary_types_round_trip_exactly_on_random_shapes() {
    let mut rng = Rng::new(42);
    for ty in GgmlType::ALL {
        let Some(codec) = &ty.traits().ternary else {
            continue;
        };
        for case in 0..12 {
            let rows = 1 + rng.below(9) as usize;
            // TQ rows are whole 256-blocks; I2_S needs whole 128-groups over the tensor only.
            let cols = match ty {
                GgmlType::I2_S if case % 2 == 1 => 64 * (2 * rng.below(4) as usize + 2),
                GgmlType::I2_S => 128 * (1 + rng.below(6) as usize),
                _ => 256 * (1 + rng.below(6) as usize),
            };
            // A gamma the type stores exactly: f16 for the TQ types' block scale.
            let gamma = f16::from_f32(0.01 + rng.unit_f32().abs()).to_f32();
            let m = TernaryMatrix::random(rows, cols, gamma, &mut rng);
            let bytes = (codec.from_ternary)(&m).unwrap();
            assert_eq!(Ok(bytes.len()), ty.byte_size(&[cols, rows]));
            assert_eq!((codec.to_ternary)(&bytes, rows, cols).unwrap(), m);
            // The f32 path agrees: ggml's per-block decoding of one shared scale.
            assert_eq!(
                quants::dequantize(ty, &bytes, rows * cols).unwrap(),
                m.dequantize(),
                "{} {rows}x{cols}",
                ty.name()
            );
            // And through a file, by the writer's and the reader's use of the table.
            let mut w = GgufWriter::new();
            w.add_ternary("w", ty, &m).unwrap();
            let f = GgufFile::from_bytes("mem", w.to_bytes()).unwrap();
            assert_eq!(f.tensor("w").unwrap().to_ternary().unwrap(), m);
        }
    }
    // Dense types have no ternary codec: the writer and the reader say so.
    let m = TernaryMatrix::random(1, 256, 1.0, &mut rng);
    let err = GgufWriter::new()
        .add_ternary("w", GgmlType::Q8_0, &m)
        .unwrap_err();
    assert!(
        err.to_string().contains("Q8_0 is not a ternary type"),
        "{err}"
    );
}
