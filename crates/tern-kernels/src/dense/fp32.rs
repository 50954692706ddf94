//! f32 weights: GEMV kernels (AVX-512, AVX2+FMA, portable) and GEMM through the `gemm` crate.

use super::{check_isa, run_rows};
use crate::cpu::Isa;
use crate::pool::ThreadPool;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `y[o] = sum_j w[o*k + j] * x[j]` for `o < m`, threaded over output rows.
pub fn gemv_f32(w: &[f32], m: usize, k: usize, x: &[f32], y: &mut [f32], pool: &ThreadPool) {
    gemv(w, m, k, x, y, pool, Isa::detect());
}

/// As [`gemv_f32`] with a chosen instruction set. Panics if this CPU does not support `isa`.
pub fn gemv_f32_with(
    w: &[f32],
    m: usize,
    k: usize,
    x: &[f32],
    y: &mut [f32],
    pool: &ThreadPool,
    isa: Isa,
) {
    check_isa(isa, "gemv_f32_with");
    gemv(w, m, k, x, y, pool, isa);
}

fn gemv(w: &[f32], m: usize, k: usize, x: &[f32], y: &mut [f32], pool: &ThreadPool, isa: Isa) {
    assert_eq!(w.len(), m * k, "gemv_f32: w is not {m}x{k}");
    assert_eq!(x.len(), k, "gemv_f32: x is not {k} long");
    assert_eq!(y.len(), m, "gemv_f32: y is not {m} long");
    run_rows(m * k, pool, y, &|rows, y| {
        rows_f32(&w[rows.start * k..rows.end * k], k, x, y, isa)
    });
}

/// `y[t][o] = sum_j w[o*k + j] * x[t][j]` for `n` activation rows (`x` `[n][k]`, `y`
/// `[n][m]`), each row with the bits [`gemv_f32`] gives it alone, the weights read once for all
/// rows (see [`super::gemv_f16_rows`]).
pub fn gemv_f32_rows(
    w: &[f32],
    m: usize,
    k: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    pool: &ThreadPool,
) {
    gemv_f32_rows_with(w, m, k, x, n, y, pool, Isa::detect());
}

/// As [`gemv_f32_rows`] with a chosen instruction set (each row has the bits of
/// [`gemv_f32_with`] on the same set). Panics if this CPU does not support `isa`.
#[allow(clippy::too_many_arguments)]
pub fn gemv_f32_rows_with(
    w: &[f32],
    m: usize,
    k: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    pool: &ThreadPool,
    isa: Isa,
) {
    check_isa(isa, "gemv_f32_rows_with");
    if n == 1 {
        // Decode of one sequence: the GEMV itself, its row split and all.
        assert_eq!(y.len(), m, "gemv_f32_rows: y is not 1x{m}");
        gemv(w, m, k, x, y, pool, isa);
        return;
    }
    super::gemv_rows(w, (m, k), x, n, y, pool, isa, rows_f32, None);
}

/// `y[o] = dot(w row o, x)` for the `y.len()` rows in `w` (`w.len() == y.len() * k`).
fn rows_f32(w: &[f32], k: usize, x: &[f32], y: &mut [f32], isa: Isa) {
    debug_assert!(w.len() == y.len() * k && x.len() == k);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: every caller checked that this CPU supports `isa` (`check_isa` or
        // `Isa::detect`); the slice lengths the kernel relies on are asserted by `gemv`.
        Isa::Avx512 => unsafe { rows_f32_avx512(w, k, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { rows_f32_avx2(w, k, x, y) },
        _ => rows_f32_portable(w, k, x, y),
    }
}

fn rows_f32_portable(w: &[f32], k: usize, x: &[f32], y: &mut [f32]) {
    if k == 0 {
        y.fill(0.0);
        return;
    }
    for (yo, row) in y.iter_mut().zip(w.chunks_exact(k)) {
        *yo = dot_portable(row, x);
    }
}

/// A dot product with 16 independent lanes, which the compiler turns into plain SIMD code.
pub(super) fn dot_portable(w: &[f32], x: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (wc, xc) = (w.chunks_exact(L), x.chunks_exact(L));
    let mut tail = 0.0f32;
    for (a, b) in wc.remainder().iter().zip(xc.remainder()) {
        tail += a * b;
    }
    for (a, b) in wc.zip(xc) {
        for ((s, a), b) in acc.iter_mut().zip(a).zip(b) {
            *s += a * b;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// # Safety
/// The CPU must support AVX-512F; `w.len() == y.len() * k`, `x.len() == k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_f32_avx512(w: &[f32], k: usize, x: &[f32], y: &mut [f32]) {
    // SAFETY: the CPU has AVX-512F (this function's contract); rows o .. o + R of w start at o
    // * k and end at or before w.len() = y.len() * k, and x has k elements, which is what
    // `dot_rows_avx512` reads.
    unsafe {
        let m = y.len();
        let mut o = 0;
        while o + 4 <= m {
            y[o..o + 4].copy_from_slice(&dot_rows_avx512::<4>(
                w.as_ptr().add(o * k),
                k,
                x.as_ptr(),
            ));
            o += 4;
        }
        while o < m {
            y[o] = dot_rows_avx512::<1>(w.as_ptr().add(o * k), k, x.as_ptr())[0];
            o += 1;
        }
    }
}

/// Dot products of `R` consecutive rows (`k` apart from `w`) with `x`: each load of `x` feeds
/// `R` FMAs, and two accumulators per row hide the FMA latency.
///
/// # Safety
/// AVX-512F; `w .. w + R*k` and `x .. x + k` readable.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn dot_rows_avx512<const R: usize>(w: *const f32, k: usize, x: *const f32) -> [f32; R] {
    // SAFETY: the CPU has AVX-512F and rows `w .. w + R*k` and `x .. x + k` are readable (this
    // function's contract): full-width loads stay below k and the tail is masked to j < k.
    unsafe {
        let mut a0 = [_mm512_setzero_ps(); R];
        let mut a1 = [_mm512_setzero_ps(); R];
        let mut j = 0;
        while j + 32 <= k {
            let x0 = _mm512_loadu_ps(x.add(j));
            let x1 = _mm512_loadu_ps(x.add(j + 16));
            for r in 0..R {
                let wr = w.add(r * k + j);
                a0[r] = _mm512_fmadd_ps(_mm512_loadu_ps(wr), x0, a0[r]);
                a1[r] = _mm512_fmadd_ps(_mm512_loadu_ps(wr.add(16)), x1, a1[r]);
            }
            j += 32;
        }
        if j + 16 <= k {
            let x0 = _mm512_loadu_ps(x.add(j));
            for (r, a) in a0.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(w.add(r * k + j)), x0, *a);
            }
            j += 16;
        }
        if j < k {
            // Masked-off lanes are neither read (no fault past the end) nor nonzero.
            let mask: __mmask16 = (1u16 << (k - j)) - 1;
            let x0 = _mm512_maskz_loadu_ps(mask, x.add(j));
            for (r, a) in a1.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, w.add(r * k + j)), x0, *a);
            }
        }
        let mut out = [0.0; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
        }
        out
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; `w.len() == y.len() * k`, `x.len() == k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_f32_avx2(w: &[f32], k: usize, x: &[f32], y: &mut [f32]) {
    // SAFETY: the CPU has AVX2 and FMA (this function's contract); rows o .. o + R of w start
    // at o * k and end at or before w.len() = y.len() * k, and x has k elements, which is what
    // `dot_rows_avx2` reads.
    unsafe {
        let m = y.len();
        let mut o = 0;
        while o + 4 <= m {
            y[o..o + 4].copy_from_slice(&dot_rows_avx2::<4>(w.as_ptr().add(o * k), k, x.as_ptr()));
            o += 4;
        }
        while o < m {
            y[o] = dot_rows_avx2::<1>(w.as_ptr().add(o * k), k, x.as_ptr())[0];
            o += 1;
        }
    }
}

/// AVX2 twin of [`dot_rows_avx512`].
///
/// # Safety
/// AVX2 + FMA; `w .. w + R*k` and `x .. x + k` readable.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2<const R: usize>(w: *const f32, k: usize, x: *const f32) -> [f32; R] {
    // SAFETY: the CPU has AVX2 and FMA and rows `w .. w + R*k` and `x .. x + k` are readable
    // (this function's contract): full-width loads stay below k and the tail is a masked load
    // of j < k.
    unsafe {
        let mut a0 = [_mm256_setzero_ps(); R];
        let mut a1 = [_mm256_setzero_ps(); R];
        let mut j = 0;
        while j + 16 <= k {
            let x0 = _mm256_loadu_ps(x.add(j));
            let x1 = _mm256_loadu_ps(x.add(j + 8));
            for r in 0..R {
                let wr = w.add(r * k + j);
                a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(wr), x0, a0[r]);
                a1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(wr.add(8)), x1, a1[r]);
            }
            j += 16;
        }
        if j + 8 <= k {
            let x0 = _mm256_loadu_ps(x.add(j));
            for (r, a) in a0.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(w.add(r * k + j)), x0, *a);
            }
            j += 8;
        }
        if j < k {
            // `vmaskmovps` does not touch (or fault on) masked-off elements; they load as zero.
            let mask = tail_mask_avx2(k - j);
            let x0 = _mm256_maskload_ps(x.add(j), mask);
            for (r, a) in a1.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_maskload_ps(w.add(r * k + j), mask), x0, *a);
            }
        }
        let mut out = [0.0; R];
        for r in 0..R {
            out[r] = hsum_avx2(_mm256_add_ps(a0[r], a1[r]));
        }
        out
    }
}

/// Lane mask (all ones in lanes `< rem`) for `_mm256_maskload_ps`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn tail_mask_avx2(rem: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(rem as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_avx2(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `y[t*ldy + o] = sum_j x[t*k + j] * w[o*k + j]` for `t < n`, `o < m`, single-threaded
/// through the `gemm` crate (pool tasks call it on their own column blocks of one `y`).
///
/// # Safety
/// `w` readable for `m*k` floats, `x` for `n*k`, `y` writable at `t*ldy + o` for `t < n`,
/// `o < m`, and no other thread touches those elements of `y` during the call.
pub(super) unsafe fn gemm_xwt_raw(
    w: *const f32,
    m: usize,
    k: usize,
    x: *const f32,
    n: usize,
    y: *mut f32,
    ldy: usize,
) {
    // In gemm's terms dst (n x m) = lhs (n x k, x) * rhs (k x m, W^T: element (j, o) is
    // w[o*k + j], so row stride 1 and column stride k). With read_dst = false, dst = beta * lhs * rhs.
    // SAFETY: the caller's contract covers every element gemm addresses: lhs (t, j) at
    // t*k + j < n*k; rhs (j, o) at o*k + j < m*k; dst (t, o) at t*ldy + o.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            y,
            1,
            ldy as isize,
            false,
            x,
            1,
            k as isize,
            w,
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `y[n][m] = x[n][k] * W^T`: our GEMV for one token (decode), `gemm` for more (prefill).
pub fn matmul_f32(
    w: &[f32],
    m: usize,
    k: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    pool: &ThreadPool,
) {
    if n == 1 {
        gemv_f32(w, m, k, x, y, pool);
    } else {
        assert_eq!(w.len(), m * k, "matmul_f32: w is not {m}x{k}");
        assert_eq!(x.len(), n * k, "matmul_f32: x is not {n}x{k}");
        assert_eq!(y.len(), n * m, "matmul_f32: y is not {n}x{m}");
        // Two tasks per thread: a thread the OS delays holds up a quarter, not half, of it.
        super::run_columns((n, m, k), 2, y, pool, &|mut y| {
            let cols = y.cols();
            let w = &w[cols.start * k..cols.end * k];
            // SAFETY: `w` holds rows `cols` of W and `x` all n*k inputs (asserted above); the
            // piece owns columns `cols` of the n rows of y, `y.row_len() == m` apart.
            unsafe { gemm_xwt_raw(w.as_ptr(), cols.len(), k, x.as_ptr(), n, y.as_mut_ptr(), m) }
        });
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::rng::Rng;

    /// f64 reference and the error bound for any summation order in f32:
    /// |fl(sum) - sum| <= (k + slack) * u * sum|w_j x_j|, u = 2^-24, plus a hair for underflow.
    pub fn reference(w: &[f64], m: usize, k: usize, x: &[f64], n: usize) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(n * m);
        for t in 0..n {
            for o in 0..m {
                let (mut s, mut a) = (0.0f64, 0.0f64);
                for j in 0..k {
                    let p = w[o * k + j] * x[t * k + j];
                    s += p;
                    a += p.abs();
                }
                out.push((
                    s,
                    (k as f64 + 32.0) * f64::from(f32::EPSILON) / 2.0 * a + 1e-30,
                ));
            }
        }
        out
    }

    pub fn check(y: &[f32], refs: &[(f64, f64)], what: &str) {
        assert_eq!(y.len(), refs.len());
        for (i, (&v, &(r, tol))) in y.iter().zip(refs).enumerate() {
            let err = (f64::from(v) - r).abs();
            assert!(
                err <= tol,
                "{what}: y[{i}] = {v}, reference {r}, error {err} > {tol}"
            );
        }
    }

    pub fn random_f32(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.unit_f32()).collect()
    }

    /// Shapes with ragged tails in both dimensions, a few big enough to be threaded.
    pub fn shapes(rng: &mut Rng) -> Vec<(usize, usize)> {
        let mut v = vec![
            (0, 5),
            (3, 0),
            (1, 1),
            (4, 16),
            (5, 31),
            (7, 33),
            (300, 257),
            (1027, 70),
        ];
        for _ in 0..20 {
            v.push((1 + rng.below(40) as usize, 1 + rng.below(200) as usize));
        }
        v
    }

    fn to_f64(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&a| f64::from(a)).collect()
    }

    #[test]
    fn gemv_matches_reference_on_every_isa() {
        let mut rng = Rng::new(1);
        let pools = [ThreadPool::new(1), ThreadPool::new(2)];
        for (m, k) in shapes(&mut rng) {
            let w = random_f32(&mut rng, m * k);
            let x = random_f32(&mut rng, k);
            let refs = reference(&to_f64(&w), m, k, &to_f64(&x), 1);
            for isa in Isa::available() {
                for pool in &pools {
                    let mut y = vec![f32::NAN; m];
                    gemv_f32_with(&w, m, k, &x, &mut y, pool, isa);
                    check(&y, &refs, &format!("gemv_f32 {m}x{k} {isa:?} {pool:?}"));
                }
            }
        }
    }

    #[test]
    fn matmul_matches_reference() {
        let mut rng = Rng::new(2);
        let pool = ThreadPool::new(2);
        for (i, (m, k)) in shapes(&mut rng).into_iter().enumerate() {
            let n = [1, 2, 3, 5, 9][i % 5];
            let w = random_f32(&mut rng, m * k);
            let x = random_f32(&mut rng, n * k);
            let refs = reference(&to_f64(&w), m, k, &to_f64(&x), n);
            let mut y = vec![f32::NAN; n * m];
            matmul_f32(&w, m, k, &x, n, &mut y, &pool);
            check(&y, &refs, &format!("matmul_f32 {n}x{m}x{k}"));
        }
    }

    #[test]
    #[should_panic(expected = "w is not 2x3")]
    fn gemv_rejects_wrong_shapes() {
        let mut y = [0.0; 2];
        gemv_f32(&[0.0; 5], 2, 3, &[0.0; 3], &mut y, &ThreadPool::new(1));
    }
}
