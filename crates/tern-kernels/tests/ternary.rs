//! Ternary compute layouts and kernels: every instruction set bit-exact against the scalar
//! reference on random shapes with ragged tails, extreme activations and 1 or many threads.

use proptest::prelude::*;
use tern_kernels::actquant::{quantize_acts_with, QuantizedActs};
use tern_kernels::rng::Rng;
use tern_kernels::ternary::{
    matmul_many_with, matmul_reference, matmul_with, Layout, PackedTernary,
};
use tern_kernels::{Isa, TernaryMatrix, ThreadPool};

fn random_acts(n: usize, k: usize, rng: &mut Rng, extremes: bool) -> QuantizedActs {
    let q: Vec<i8> = (0..n * k)
        .map(|_| {
            if extremes {
                [-128i8, 127, -128, 127, 0, 1][rng.below(6) as usize]
            } else {
                rng.next_u64() as i8
            }
        })
        .collect();
    let scales: Vec<f32> = (0..n).map(|_| 0.5 + rng.unit_f32().abs() * 100.0).collect();
    QuantizedActs::from_parts(n, k, &q, &scales)
}

fn check_all_paths(
    w: &TernaryMatrix,
    x: &QuantizedActs,
    pools: &[ThreadPool],
) -> Result<(), TestCaseError> {
    let mut want = vec![0f32; x.n * w.rows];
    matmul_reference(w, x, &mut want);
    for layout in Layout::ALL {
        let p = PackedTernary::pack(w, layout);
        for isa in Isa::available() {
            for pool in pools {
                let mut got = vec![f32::NAN; x.n * w.rows];
                matmul_with(&p, x, &mut got, pool, isa);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(
                    same,
                    "{} {} threads={} m={} k={} n={}",
                    layout.name(),
                    isa.name(),
                    pool.threads(),
                    w.rows,
                    w.cols,
                    x.n
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn kernels_match_reference_bit_exactly(
        m in 1usize..80, k in 1usize..400, n in 1usize..20, seed: u64, extremes: bool, zero_row in 0usize..4,
    ) {
        let mut rng = Rng::new(seed);
        let mut w = TernaryMatrix::random(m, k, 0.37 + (seed % 7) as f32, &mut rng);
        if zero_row < m {
            w.values[zero_row * k..(zero_row + 1) * k].fill(0);
        }
        let x = random_acts(n, k, &mut rng, extremes);
        let pools = [ThreadPool::new(1), ThreadPool::new(3)];
        check_all_paths(&w, &x, &pools)?;
    }

    #[test]
    fn layouts_round_trip(m in 1usize..70, k in 1usize..200, seed: u64) {
        let mut rng = Rng::new(seed);
        let w = TernaryMatrix::random(m, k, 1.5, &mut rng);
        for layout in Layout::ALL {
            let p = PackedTernary::pack(&w, layout);
            prop_assert_eq!(&p.unpack(), &w);
            let again = PackedTernary::from_bytes(layout, m, k, 1.5, p.as_bytes()).unwrap();
            prop_assert_eq!(again.unpack(), w.clone());
        }
    }
}

/// Several matrices in one pool job (q/k/v, gate/up) give each one's own bits, with the
/// task boundaries falling anywhere across them, mixed layouts included.
fn check_many(
    rows: &[usize],
    k: usize,
    n: usize,
    seed: u64,
    mixed: bool,
) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let ws: Vec<PackedTernary> = rows
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let layout = if mixed && i % 2 == 1 {
                Layout::Tern3
            } else {
                Layout::Tern2
            };
            PackedTernary::pack(
                &TernaryMatrix::random(m, k, 0.5 + i as f32, &mut rng),
                layout,
            )
        })
        .collect();
    let x = random_acts(n, k, &mut rng, false);
    let refs: Vec<&PackedTernary> = ws.iter().collect();
    for isa in Isa::available() {
        for pool in [ThreadPool::new(1), ThreadPool::new(2), ThreadPool::new(5)] {
            let mut got: Vec<Vec<f32>> = rows.iter().map(|&m| vec![f32::NAN; n * m]).collect();
            let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|v| v.as_mut_slice()).collect();
            matmul_many_with(&refs, &x, &mut outs, &pool, isa);
            for (w, g) in ws.iter().zip(&got) {
                let mut want = vec![0f32; n * w.rows()];
                matmul_reference(&w.unpack(), &x, &mut want);
                let same = g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(
                    same,
                    "{} threads={} rows={:?} k={k} n={n}",
                    isa.name(),
                    pool.threads(),
                    rows
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn matmul_many_matches_separate_calls(
        rows in proptest::collection::vec(1usize..90, 1..=4), k in 1usize..300, n in 1usize..10,
        seed: u64, mixed: bool,
    ) {
        check_many(&rows, k, n, seed, mixed)?;
    }
}

#[test]
fn matmul_many_splits_tasks_across_matrices() {
    // Large enough for many tasks, with odd group counts so task runs straddle matrices.
    check_many(&[200, 40, 40], 2000, 1, 3, false).unwrap();
    check_many(&[200, 40, 40], 1000, 3, 4, true).unwrap();
    check_many(&[6912 / 4, 6912 / 4], 640, 1, 5, false).unwrap();
}

#[test]
fn gemm_and_gemv_on_larger_shapes_with_all_extremes() {
    // Larger than the proptest shapes: several threads get several groups and tiles, and
    // every activation at -128 with every weight at -1 reaches the accumulator's extreme.
    let mut rng = Rng::new(7);
    let pools = [ThreadPool::new(1), ThreadPool::new(2), ThreadPool::new(4)];
    for &(m, k, n) in &[(200, 1000, 1), (131, 700, 17), (64, 2560, 9), (48, 6912, 1)] {
        let w = TernaryMatrix::random(m, k, 0.8, &mut rng);
        check_all_paths(&w, &random_acts(n, k, &mut rng, false), &pools).unwrap();
        let all_neg = TernaryMatrix::new(m, k, vec![-1; m * k], 0.8).unwrap();
        let x = QuantizedActs::from_parts(n, k, &vec![-128; n * k], &vec![1.0; n]);
        check_all_paths(&all_neg, &x, &pools).unwrap();
        let mut y = vec![0f32; n * m];
        matmul_reference(&all_neg, &x, &mut y);
        assert_eq!(y[0], 128.0 * k as f32 * 0.8);
    }
}

#[test]
fn quantize_then_matmul_matches_float_within_quantization_error() {
    // End to end against f64: the int8 path is an approximation of the float product whose
    // error is bounded by the activation rounding (half a step per element).
    let (m, k, n) = (33, 300, 3);
    let mut rng = Rng::new(3);
    let w = TernaryMatrix::random(m, k, 0.05, &mut rng);
    let x: Vec<f32> = (0..n * k).map(|_| rng.unit_f32() * 4.0).collect();
    let pool = ThreadPool::new(2);
    let mut q = QuantizedActs::new();
    quantize_acts_with(&x, n, k, &mut q, &pool, Isa::detect());
    let p = PackedTernary::pack(&w, Layout::Tern2);
    let mut y = vec![0f32; n * m];
    matmul_with(&p, &q, &mut y, &pool, Isa::detect());
    for t in 0..n {
        let step = 1.0 / q.scales[t] as f64;
        for o in 0..m {
            let exact: f64 = (0..k)
                .map(|j| w.values[o * k + j] as f64 * w.gamma as f64 * x[t * k + j] as f64)
                .sum();
            let bound = 0.5 * step * w.gamma as f64 * k as f64 + 1e-4;
            assert!(
                (y[t * m + o] as f64 - exact).abs() <= bound,
                "t {t} o {o}: {} vs {exact}",
                y[t * m + o]
            );
        }
    }
}

#[test]
fn tern2_bytes_match_the_documented_layout() {
    // One row, 16 columns: value at column 4i + j lands in byte j (lane 0), bits 2i.
    let mut values = vec![0i8; 16];
    values[0] = 1; // i=0 j=0 -> byte 0 bits 0-1 = code 2
    values[5] = -1; // i=1 j=1 -> byte 1 bits 2-3 = code 0
    values[14] = 1; // i=3 j=2 -> byte 2 bits 6-7 = code 2
    let w = TernaryMatrix::new(1, 16, values, 1.0).unwrap();
    let p = PackedTernary::pack(&w, Layout::Tern2);
    let b = p.as_bytes();
    assert_eq!(b.len(), 64);
    // Untouched codes are 1 (0b01) in every 2-bit field: 0b01010101 = 0x55.
    assert_eq!(b[0], 0x54 | 0b10);
    assert_eq!(b[1], 0x55 & !0b1100);
    assert_eq!(b[2], (0x55 & !0b1100_0000) | 0b1000_0000);
    assert_eq!(b[3], 0x55);
    // Padding rows 1..16 hold weight 0 everywhere.
    assert!(b[4..].iter().all(|&x| x == 0x55));
}

#[test]
fn tern3_bytes_match_the_documented_layout() {
    // Row 0, columns 0,4,8,12,16 (lane 0, byte 0) = +1,-1,0,0,+1 -> codes 2,0,1,1,2
    // v = 2*81 + 0*27 + 1*9 + 1*3 + 2 = 176, byte = ceil(176*256/243) = 186.
    let mut values = vec![0i8; 20];
    values[0] = 1;
    values[4] = -1;
    values[16] = 1;
    let w = TernaryMatrix::new(1, 20, values, 1.0).unwrap();
    let p = PackedTernary::pack(&w, Layout::Tern3);
    let b = p.as_bytes();
    assert_eq!(b[0], 186);
    // All-zero group: codes 1,1,1,1,1 -> v = 121 -> ceil(121*256/243) = 128.
    assert!(b[1..].iter().all(|&x| x == 128));
}

#[test]
fn from_bytes_rejects_invalid_codes_and_lengths() {
    let w = TernaryMatrix::new(3, 10, vec![0; 30], 1.0).unwrap();
    let p = PackedTernary::pack(&w, Layout::Tern2);
    let mut bytes = p.as_bytes().to_vec();
    let err = PackedTernary::from_bytes(Layout::Tern2, 3, 10, 1.0, &bytes[1..]).unwrap_err();
    assert!(err.to_string().contains("expected 64 bytes"), "{err}");
    bytes[0] = 0xFF; // code 3
    let err = PackedTernary::from_bytes(Layout::Tern2, 3, 10, 1.0, &bytes).unwrap_err();
    assert!(err.to_string().contains("code 3"), "{err}");
    bytes[0] = 0x55;
    bytes[63] = 0x56; // padding row with weight +1
    assert!(PackedTernary::from_bytes(Layout::Tern2, 3, 10, 1.0, &bytes).is_err());
    let p3 = PackedTernary::pack(&w, Layout::Tern3);
    let mut b3 = p3.as_bytes().to_vec();
    b3[0] = 255; // encodes v > 242
    assert!(PackedTernary::from_bytes(Layout::Tern3, 3, 10, 1.0, &b3).is_err());
}

#[test]
fn activation_quantization_follows_bitnet_reference() {
    let pool = ThreadPool::new(2);
    // Ties go to even (0.5 -> 0, 1.5 -> 2), the absmax maps to exactly 127, the 1e-5 floor
    // keeps an all-zero row finite.
    let x = [
        127.0f32, 0.5, 1.5, -2.5, -127.0, 63.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    for isa in Isa::available() {
        let mut q = QuantizedActs::new();
        quantize_acts_with(&x, 2, 6, &mut q, &pool, isa);
        assert_eq!(q.row(0), &[127, 0, 2, -2, -127, 64]);
        assert_eq!(q.scales[0], 1.0);
        assert_eq!(q.sums[0], [127, 0, 2, -2, -127, 64].iter().sum::<i32>());
        assert_eq!(q.row(1), &[0; 6]);
        assert_eq!(q.scales[1], 127.0 / 1e-5);
        assert!(q.row_padded(0)[6..].iter().all(|&v| v == 0));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn activation_quantization_is_identical_on_every_isa(n in 1usize..6, k in 1usize..300, seed: u64) {
        let mut rng = Rng::new(seed);
        let x: Vec<f32> = (0..n * k).map(|_| rng.unit_f32() * 10.0).collect();
        let pool = ThreadPool::new(2);
        let mut want = QuantizedActs::new();
        quantize_acts_with(&x, n, k, &mut want, &pool, Isa::Portable);
        for t in 0..n {
            let row = &x[t * k..(t + 1) * k];
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = 127.0 / amax.max(1e-5);
            let expect: Vec<i8> = row.iter().map(|v| (v * s).round_ties_even().clamp(-128.0, 127.0) as i8).collect();
            prop_assert_eq!(want.row(t), &expect[..]);
        }
        for isa in Isa::available() {
            let mut got = QuantizedActs::new();
            quantize_acts_with(&x, n, k, &mut got, &pool, isa);
            prop_assert_eq!(got.bytes(), want.bytes());
            prop_assert_eq!(&got.scales, &want.scales);
            prop_assert_eq!(&got.sums, &want.sums);
        }
    }
}

#[test]
fn reused_activation_buffer_is_repadded_when_the_input_narrows() {
    // A buffer first filled with a wide input and then reused for a narrower one must not keep
    // stale bytes past k: kernels read whole padded rows.
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(11);
    let wide: Vec<f32> = (0..3 * 700).map(|_| rng.unit_f32()).collect();
    let narrow: Vec<f32> = (0..3 * 30).map(|_| rng.unit_f32()).collect();
    for isa in Isa::available() {
        let mut q = QuantizedActs::new();
        quantize_acts_with(&wide, 3, 700, &mut q, &pool, isa);
        quantize_acts_with(&narrow, 3, 30, &mut q, &pool, isa);
        for t in 0..3 {
            assert!(
                q.row_padded(t)[30..].iter().all(|&v| v == 0),
                "{} row {t}",
                isa.name()
            );
        }
        let w = TernaryMatrix::random(20, 30, 1.0, &mut rng);
        let mut want = vec![0f32; 3 * 20];
        matmul_reference(&w, &q, &mut want);
        for layout in Layout::ALL {
            let mut got = vec![0f32; 3 * 20];
            matmul_with(&PackedTernary::pack(&w, layout), &q, &mut got, &pool, isa);
            assert_eq!(got, want);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn lookup_table_gemv_matches_reference_bit_exactly(
        m in 1usize..200, k in 1usize..700, seed: u64, extremes: bool,
    ) {
        use tern_kernels::ternary::lut::{LutTables, LutTernary};
        let mut rng = Rng::new(seed);
        let w = TernaryMatrix::random(m, k, 0.3, &mut rng);
        let x = random_acts(2, k, &mut rng, extremes);
        let mut want = vec![0f32; 2 * m];
        matmul_reference(&w, &x, &mut want);
        let lut = LutTernary::pack(&w);
        let mut tables = LutTables::default();
        for isa in Isa::available() {
            for threads in [1, 3] {
                let pool = ThreadPool::new(threads);
                for t in 0..2 {
                    LutTernary::build_tables(&x, t, &mut tables);
                    let mut got = vec![f32::NAN; m];
                    lut.gemv(&x, t, &tables, &mut got, &pool, isa);
                    prop_assert!(
                        got.iter().zip(&want[t * m..]).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} threads {threads} m {m} k {k}", isa.name()
                    );
                }
            }
        }
    }
}

#[test]
fn lookup_table_gemv_survives_the_i16_flush_at_extremes() {
    // Every table entry at its extreme (256) for thousands of columns: the i16 partial sums
    // must be flushed to i32 before they overflow.
    use tern_kernels::ternary::lut::{LutTables, LutTernary};
    let (m, k) = (70, 4000);
    let w = TernaryMatrix::new(m, k, vec![-1; m * k], 1.0).unwrap();
    let x = QuantizedActs::from_parts(1, k, &vec![-128; k], &[1.0]);
    let mut tables = LutTables::default();
    LutTernary::build_tables(&x, 0, &mut tables);
    let mut want = vec![0f32; m];
    matmul_reference(&w, &x, &mut want);
    for isa in Isa::available() {
        let mut got = vec![0f32; m];
        LutTernary::pack(&w).gemv(&x, 0, &tables, &mut got, &ThreadPool::new(2), isa);
        assert_eq!(got, want, "{}", isa.name());
        assert_eq!(got[0], 128.0 * k as f32);
    }
}
