//! int8 weights with one f32 scale per row, times int8 activations: embeddings and the LM head,
//! which BitNet keeps at higher precision than ternary.
//!
//! `y[t][o] = (sum_j x_q[t][j] * w_q[o][j]) as f32 / s[t] * scale[o]`, the sum in i32.
//! The integer sum is exact on every path, and the float epilogue is the same two IEEE
//! operations in the same order everywhere, so all instruction sets agree bit for bit.
//!
//! # Exactness
//!
//! Weights are in [-127, 127] (never -128) and activations in [-128, 127], so one product is at
//! most 128 * 127 = 16256 in magnitude and every partial sum of a row fits i32 while
//! `k <= MAX_COLS = 2^17` (16256 * 2^17 < 2^31).
//!
//! * AVX-512 VNNI: `vpdpbusd` multiplies unsigned by signed bytes, so it is fed
//!   `u = x ^ 0x80 = x + 128` (in 0..=255) and `w`, giving `sum x*w + 128 * sum w`; the
//!   precomputed `128 * row_sum(w)` is subtracted. The biased lanes may wrap, but every step is
//!   i32 addition mod 2^32 and the true result fits i32, so the wrapped result is the exact one.
//! * AVX2: `vpmaddubsw` adds two u8*i8 products with *signed saturation* to i16, and
//!   255 * 127 * 2 overflows it, so the offset trick is not exact there. Instead it is fed
//!   `|x|` (`vpabsb`; |-128| = 0x80 read as unsigned is 128, correct) and `sign(w, x)`
//!   (`vpsignb`: w negated where x < 0, zeroed where x == 0; |w| <= 127 so the negation never
//!   wraps). Each product is `|x| * sgn(x) * w = x * w`, a pair sums to at most
//!   2 * 128 * 127 = 32512 <= 32767, so nothing saturates; `vpmaddwd` by ones widens pairs of
//!   those to i32 exactly.
//! * Portable: plain i32 arithmetic, the reference.

use super::{check_isa, task_count, ROW_UNIT};
use crate::actquant::QuantizedActs;
use crate::aligned::AlignedBytes;
use crate::cpu::Isa;
use crate::pool::{Cols, ColsPiece, ThreadPool};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Row stride granularity of [`Int8Matrix`]: one AVX-512 load, so kernels read whole blocks of
/// weights without tail checks (the zero padding adds nothing to any sum).
pub const I8_ALIGN: usize = 64;

/// An int8 matrix with one scale per row: `w[o][j] ~= values[o][j] * scales[o]`.
#[derive(Clone, Debug)]
pub struct Int8Matrix {
    pub rows: usize,
    pub cols: usize,
    /// Bytes between rows of the values (`cols` rounded up to [`I8_ALIGN`], zero padded).
    pub stride: usize,
    values: AlignedBytes,
    /// Per-row dequantization scale (`max|w_row| / 127`; 0 for an all-zero row).
    pub scales: Vec<f32>,
    /// Per-row sum of the values, for the VNNI unsigned-offset correction.
    row_sums: Vec<i32>,
}

impl Int8Matrix {
    /// Widest row the i32 accumulators are guaranteed exact for (see the module docs).
    pub const MAX_COLS: usize = 1 << 17;

    /// Per-row absmax quantization: `scale = max|w_row| / 127`,
    /// `q = clamp(round_ties_even(w / scale), -127, 127)`; an all-zero row gets scale 0.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "Int8Matrix: w is not {rows}x{cols}");
        let mut q = vec![0i8; rows * cols];
        let mut scales = vec![0.0f32; rows];
        if cols > 0 {
            for ((row, qrow), scale) in w
                .chunks_exact(cols)
                .zip(q.chunks_exact_mut(cols))
                .zip(&mut scales)
            {
                let amax = row.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
                if amax == 0.0 {
                    continue;
                }
                *scale = amax / 127.0;
                for (d, &v) in qrow.iter_mut().zip(row) {
                    *d = (v / *scale).round_ties_even().clamp(-127.0, 127.0) as i8;
                }
            }
        }
        Self::from_parts(rows, cols, &q, &scales)
    }

    /// Builds a matrix from quantized values (row-major, in [-127, 127]) and per-row scales.
    pub fn from_parts(rows: usize, cols: usize, q: &[i8], scales: &[f32]) -> Self {
        assert_eq!(q.len(), rows * cols, "Int8Matrix: q is not {rows}x{cols}");
        assert_eq!(scales.len(), rows, "Int8Matrix: one scale per row");
        assert!(
            cols <= Self::MAX_COLS,
            "Int8Matrix: {cols} columns > MAX_COLS"
        );
        // -128 would break the AVX2 sign trick (its negation wraps).
        assert!(
            !q.contains(&i8::MIN),
            "Int8Matrix: values must be in [-127, 127]"
        );
        let stride = cols.div_ceil(I8_ALIGN) * I8_ALIGN;
        let mut values = AlignedBytes::zeroed(rows * stride);
        let mut row_sums = vec![0i32; rows];
        if cols > 0 {
            let dst = values.as_mut_slice();
            for (o, src) in q.chunks_exact(cols).enumerate() {
                for (d, &v) in dst[o * stride..].iter_mut().zip(src) {
                    *d = v as u8;
                }
                row_sums[o] = src.iter().map(|&v| i32::from(v)).sum();
            }
        }
        Int8Matrix {
            rows,
            cols,
            stride,
            values,
            scales: scales.to_vec(),
            row_sums,
        }
    }

    /// Row `o`, exactly `cols` values.
    pub fn row(&self, o: usize) -> &[i8] {
        &self.row_padded(o)[..self.cols]
    }

    /// Row `o` including its zero padding (`stride` values).
    pub fn row_padded(&self, o: usize) -> &[i8] {
        bytemuck::cast_slice(&self.values.as_slice()[o * self.stride..(o + 1) * self.stride])
    }

    /// Sum of row `o`'s values.
    pub fn row_sum(&self, o: usize) -> i32 {
        self.row_sums[o]
    }

    /// `out[j] = values[o][j] * scales[o]` (an embedding lookup).
    pub fn dequantize_row(&self, o: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "dequantize_row: wrong out length");
        let s = self.scales[o];
        for (d, &q) in out.iter_mut().zip(self.row(o)) {
            *d = f32::from(q) * s;
        }
    }
}

/// `y[t][o] = (sum_j x_q[t][j] * w_q[o][j]) as f32 / x.scales[t] * w.scales[o]` for every token
/// `t < x.n` (`y` is `[x.n][w.rows]`), threaded over output rows.
pub fn gemv_i8(w: &Int8Matrix, x: &QuantizedActs, y: &mut [f32], pool: &ThreadPool) {
    gemv(w, x, y, pool, Isa::detect());
}

/// As [`gemv_i8`] with a chosen instruction set (all give identical bits). Panics if this CPU
/// does not support `isa`.
pub fn gemv_i8_with(w: &Int8Matrix, x: &QuantizedActs, y: &mut [f32], pool: &ThreadPool, isa: Isa) {
    check_isa(isa, "gemv_i8_with");
    gemv(w, x, y, pool, isa);
}

fn gemv(w: &Int8Matrix, x: &QuantizedActs, y: &mut [f32], pool: &ThreadPool, isa: Isa) {
    let (m, n) = (w.rows, x.n);
    assert_eq!(x.k, w.cols, "gemv_i8: activation and weight widths differ");
    assert_eq!(y.len(), n * m, "gemv_i8: y is not {n}x{m}");
    let tasks = task_count(m * w.cols * n, pool);
    // Tasks own disjoint ranges of output rows `o`, i.e. columns of `y`.
    let parts = Cols::new(y, n, m, 1).align(ROW_UNIT);
    pool.run_split(tasks, parts, &|_, mut y| rows_i8(w, x, &mut y, isa));
}

/// Computes rows `y.cols()` of every token into `y` (`[x.n][w.rows]`): four rows at a time for
/// all tokens, so those rows of W stay in L1 while the tokens go by.
fn rows_i8(w: &Int8Matrix, x: &QuantizedActs, y: &mut ColsPiece<f32>, isa: Isa) {
    let rows = y.cols();
    let mut o = rows.start;
    while o < rows.end {
        let r = (rows.end - o).min(4);
        for t in 0..x.n {
            let acc = dots(w, o, r, x.row(t), isa);
            let s = x.scales[t];
            let out = &mut y.row(t)[o - rows.start..][..r];
            for (i, (&a, v)) in acc[..r].iter().zip(out).enumerate() {
                *v = (a as f32 / s) * w.scales[o + i];
            }
        }
        o += r;
    }
}

/// Exact dot products of rows `o..o + r` (`r <= 4`) of `w` with `x` (`w.cols` values).
fn dots(w: &Int8Matrix, o: usize, r: usize, x: &[i8], isa: Isa) -> [i32; 4] {
    debug_assert!(r <= 4 && o + r <= w.rows && x.len() == w.cols);
    let mut acc = [0i32; 4];
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            let wp = w.values.as_slice()[o * w.stride..(o + r) * w.stride]
                .as_ptr()
                .cast::<i8>();
            // SAFETY: the CPU supports AVX-512 VNNI (checked by every caller); the `r` rows of
            // `stride` bytes start at `wp` (sliced above), and `stride >= 64 * ceil(k / 64)`.
            unsafe {
                if r == 4 {
                    acc = dot_rows_vnni::<4>(wp, w.stride, x);
                } else {
                    for (i, a) in acc[..r].iter_mut().enumerate() {
                        *a = dot_rows_vnni::<1>(wp.add(i * w.stride), w.stride, x)[0];
                    }
                }
            }
            for (i, a) in acc[..r].iter_mut().enumerate() {
                *a = a.wrapping_sub(128 * w.row_sums[o + i]);
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            let wp = w.values.as_slice()[o * w.stride..(o + r) * w.stride]
                .as_ptr()
                .cast::<i8>();
            // SAFETY: the CPU supports AVX2 (checked by every caller); rows as above, and
            // `stride >= 32 * ceil(k / 32)`.
            unsafe {
                if r == 4 {
                    acc = dot_rows_avx2::<4>(wp, w.stride, x);
                } else {
                    for (i, a) in acc[..r].iter_mut().enumerate() {
                        *a = dot_rows_avx2::<1>(wp.add(i * w.stride), w.stride, x)[0];
                    }
                }
            }
        }
        _ => {
            for (i, a) in acc[..r].iter_mut().enumerate() {
                *a = dot_portable(w.row(o + i), x);
            }
        }
    }
    acc
}

fn dot_portable(w: &[i8], x: &[i8]) -> i32 {
    w.iter()
        .zip(x)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

/// `sum_j (x_j + 128) * w_j` for `R` rows `ws` bytes apart, wrapping (see the module docs).
/// Only `x.len()` activation bytes are read (the tail with a masked load), so whatever lies in
/// the activation row's padding cannot matter.
///
/// # Safety
/// AVX-512 F/BW + VNNI; `w .. w + R*ws` readable and `ws >= 64 * ceil(x.len() / 64)`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_rows_vnni<const R: usize>(w: *const i8, ws: usize, x: &[i8]) -> [i32; R] {
    // SAFETY: the CPU has AVX-512 F/BW + VNNI, `w .. w + R*ws` is readable and ws covers
    // x.len() rounded up to 64 (this function's contract): x loads stay below k (the tail is
    // masked) and each 64-byte weight load ends at or before the row's ws bytes.
    unsafe {
        let (k, xp) = (x.len(), x.as_ptr());
        let bias = _mm512_set1_epi8(i8::MIN);
        let mut acc = [_mm512_setzero_si512(); R];
        let mut j = 0;
        while j + 64 <= k {
            let xu = _mm512_xor_si512(_mm512_loadu_si512(xp.add(j).cast()), bias);
            for (r, a) in acc.iter_mut().enumerate() {
                let wv = _mm512_loadu_si512(w.add(r * ws + j).cast());
                *a = _mm512_dpbusd_epi32(*a, xu, wv);
            }
            j += 64;
        }
        if j < k {
            // Masked-off lanes of x become 128 after the xor, but they meet zero weight padding.
            let mask: __mmask64 = (1u64 << (k - j)) - 1;
            let xu = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, xp.add(j)), bias);
            for (r, a) in acc.iter_mut().enumerate() {
                let wv = _mm512_loadu_si512(w.add(r * ws + j).cast());
                *a = _mm512_dpbusd_epi32(*a, xu, wv);
            }
        }
        let mut out = [0; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_epi32(acc[r]);
        }
        out
    }
}

/// Exact `sum_j x_j * w_j` for `R` rows `ws` bytes apart with the `|x|`, `sign(w, x)` trick
/// (see the module docs). Reads only `x.len()` activation bytes.
///
/// # Safety
/// AVX2; `w .. w + R*ws` readable, `ws >= 32 * ceil(x.len() / 32)`, no weight is -128.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot_rows_avx2<const R: usize>(w: *const i8, ws: usize, x: &[i8]) -> [i32; R] {
    // SAFETY: the CPU has AVX2, `w .. w + R*ws` is readable and ws covers x.len() rounded up to
    // 32 (this function's contract): x loads stay below k (the tail goes through a stack
    // buffer) and each 32-byte weight block ends at or before the row's ws bytes, as
    // `madd_rows_avx2` requires.
    unsafe {
        let k = x.len();
        let mut acc = [_mm256_setzero_si256(); R];
        let mut j = 0;
        while j + 32 <= k {
            let xv = _mm256_loadu_si256(x.as_ptr().add(j).cast());
            madd_rows_avx2(&mut acc, xv, w.add(j), ws);
            j += 32;
        }
        if j < k {
            let mut buf = [0i8; 32];
            buf[..k - j].copy_from_slice(&x[j..]);
            let xv = _mm256_loadu_si256(buf.as_ptr().cast());
            madd_rows_avx2(&mut acc, xv, w.add(j), ws);
        }
        let mut out = [0; R];
        for r in 0..R {
            let v = acc[r];
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            out[r] = _mm_cvtsi128_si32(s);
        }
        out
    }
}

/// `acc[r] += pairwise-widened x * w[r]` for one 32-byte block.
///
/// # Safety
/// AVX2; `w + r*ws .. + 32` readable for `r < R`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn madd_rows_avx2<const R: usize>(
    acc: &mut [__m256i; R],
    xv: __m256i,
    w: *const i8,
    ws: usize,
) {
    // SAFETY: the CPU has AVX2 and `w + r*ws .. + 32` is readable for r < R (this function's
    // contract), which is exactly what the loads read.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let ax = _mm256_abs_epi8(xv);
        for (r, a) in acc.iter_mut().enumerate() {
            let wv = _mm256_loadu_si256(w.add(r * ws).cast());
            let pairs = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv));
            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, ones));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Independent reference: i64 sums, then the documented epilogue.
    fn reference(w: &Int8Matrix, x: &QuantizedActs) -> Vec<f32> {
        let mut y = Vec::new();
        for t in 0..x.n {
            for o in 0..w.rows {
                let acc: i64 = w
                    .row(o)
                    .iter()
                    .zip(x.row(t))
                    .map(|(&a, &b)| i64::from(a) * i64::from(b))
                    .sum();
                y.push((acc as i32 as f32 / x.scales[t]) * w.scales[o]);
            }
        }
        y
    }

    fn random_acts(rng: &mut Rng, n: usize, k: usize) -> QuantizedActs {
        let q: Vec<i8> = (0..n * k)
            .map(|_| match rng.below(8) {
                0 => -128,
                1 => 127,
                _ => rng.next_u64() as i8,
            })
            .collect();
        let scales: Vec<f32> = (0..n).map(|_| 1.0 + rng.unit_f32().abs() * 100.0).collect();
        QuantizedActs::from_parts(n, k, &q, &scales)
    }

    fn random_weights(rng: &mut Rng, m: usize, k: usize) -> Int8Matrix {
        let mut w: Vec<f32> = (0..m * k).map(|_| rng.unit_f32() * 3.0).collect();
        for o in 0..m {
            if rng.below(5) == 0 {
                w[o * k..(o + 1) * k].fill(0.0); // all-zero rows
            }
        }
        Int8Matrix::quantize(&w, m, k)
    }

    fn assert_bits_eq(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len());
        for (i, (u, v)) in a.iter().zip(b).enumerate() {
            assert_eq!(u.to_bits(), v.to_bits(), "{what}: y[{i}] {u} vs {v}");
        }
    }

    #[test]
    fn every_isa_is_bit_exact() {
        let mut rng = Rng::new(11);
        let pools = [ThreadPool::new(1), ThreadPool::new(2)];
        let mut shapes = vec![
            (0, 10, 1),
            (5, 0, 2),
            (3, 7, 0),
            (1, 1, 1),
            (4, 64, 1),
            (17, 63, 3),
            (16, 65, 2),
            (300, 300, 1),
        ];
        for _ in 0..25 {
            shapes.push((
                1 + rng.below(40) as usize,
                1 + rng.below(300) as usize,
                1 + rng.below(4) as usize,
            ));
        }
        for (m, k, n) in shapes {
            let w = random_weights(&mut rng, m, k);
            let x = random_acts(&mut rng, n, k);
            let want = reference(&w, &x);
            for isa in Isa::available() {
                for pool in &pools {
                    let mut y = vec![f32::NAN; n * m];
                    gemv_i8_with(&w, &x, &mut y, pool, isa);
                    assert_bits_eq(&y, &want, &format!("gemv_i8 {n}x{m}x{k} {isa:?} {pool:?}"));
                }
            }
        }
    }

    #[test]
    fn extreme_values_are_exact() {
        // Every product at its largest magnitude, both signs, on a width with a ragged tail:
        // any saturation (e.g. maddubs with the +128 offset) would show here.
        let (m, k) = (6, 1000);
        let mut q = vec![0i8; m * k];
        for (o, row) in q.chunks_exact_mut(k).enumerate() {
            row.fill([127, -127, 127, -127, 0, 1][o]);
        }
        q[4 * k + 999] = -127;
        let w = Int8Matrix::from_parts(m, k, &q, &[1.0; 6]);
        let xs: Vec<i8> = (0..3 * k).map(|i| [-128, 127, -128][i / k]).collect();
        let mut xs2 = xs.clone();
        for (i, v) in xs2[2 * k..].iter_mut().enumerate() {
            *v = if i % 2 == 0 { -128 } else { 127 };
        }
        let x = QuantizedActs::from_parts(3, k, &xs2, &[1.0; 3]);
        let want = reference(&w, &x);
        assert_eq!(want[0], -128.0 * 127.0 * k as f32);
        for isa in Isa::available() {
            let mut y = vec![0.0; 3 * m];
            gemv_i8_with(&w, &x, &mut y, &ThreadPool::new(1), isa);
            assert_bits_eq(&y, &want, &format!("{isa:?}"));
        }
    }

    #[test]
    fn stale_activation_padding_is_ignored() {
        // Reusing a QuantizedActs for a narrower shape may leave old bytes past `k`.
        let pool = ThreadPool::new(1);
        let mut rng = Rng::new(12);
        let wide: Vec<f32> = (0..2 * 1000).map(|_| rng.unit_f32()).collect();
        let narrow: Vec<f32> = (0..3 * 100).map(|_| rng.unit_f32()).collect();
        let mut reused = QuantizedActs::new();
        crate::quantize_acts(&wide, 2, 1000, &mut reused, &pool);
        crate::quantize_acts(&narrow, 3, 100, &mut reused, &pool);
        let mut fresh = QuantizedActs::new();
        crate::quantize_acts(&narrow, 3, 100, &mut fresh, &pool);
        let w = random_weights(&mut rng, 9, 100);
        let want = reference(&w, &fresh);
        for isa in Isa::available() {
            let mut y = vec![0.0; 27];
            gemv_i8_with(&w, &reused, &mut y, &pool, isa);
            assert_bits_eq(&y, &want, &format!("{isa:?}"));
        }
    }

    #[test]
    fn quantize_roundtrip() {
        let mut rng = Rng::new(13);
        let (m, k) = (7, 77);
        let mut w: Vec<f32> = (0..m * k).map(|_| rng.unit_f32()).collect();
        w[2 * k..3 * k].fill(0.0);
        w[5 * k + 3] = -10.0;
        let q = Int8Matrix::quantize(&w, m, k);
        assert_eq!(q.stride, 128);
        assert_eq!(q.scales[2], 0.0);
        assert_eq!(q.row(5)[3], -127);
        let mut out = vec![0.0; k];
        for o in 0..m {
            assert!(q.row_padded(o)[k..].iter().all(|&v| v == 0));
            assert_eq!(
                q.row_sum(o),
                q.row(o).iter().map(|&v| i32::from(v)).sum::<i32>()
            );
            let amax = q.row(o).iter().map(|v| v.unsigned_abs()).max().unwrap();
            assert!(amax == 127 || q.scales[o] == 0.0);
            q.dequantize_row(o, &mut out);
            for (a, b) in out.iter().zip(&w[o * k..(o + 1) * k]) {
                assert!((a - b).abs() <= q.scales[o] * 0.5001, "row {o}: {a} vs {b}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "[-127, 127]")]
    fn minus_128_weights_are_rejected() {
        Int8Matrix::from_parts(1, 2, &[0, -128], &[1.0]);
    }
}
