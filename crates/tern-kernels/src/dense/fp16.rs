//! f16 weights with f32 activations and outputs: half the bytes of f32 per weight, converted to
//! f32 in registers (`vcvtph2ps`) and accumulated in f32.

use super::fp32::{dot_portable, gemm_xwt_raw};
use super::{check_isa, run_rows};
use crate::cpu::Isa;
use crate::pool::ThreadPool;
use half::f16;
use std::cell::Cell;

#[cfg(target_arch = "x86_64")]
use super::fp32::{hsum_avx2, tail_mask_avx2};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `y[o] = sum_j w[o*k + j] * x[j]` for `o < m` with f16 weights, threaded over output rows.
pub fn gemv_f16(w: &[f16], m: usize, k: usize, x: &[f32], y: &mut [f32], pool: &ThreadPool) {
    gemv(w, m, k, x, y, pool, Isa::detect());
}

/// As [`gemv_f16`] with a chosen instruction set. Panics if this CPU does not support `isa`.
pub fn gemv_f16_with(
    w: &[f16],
    m: usize,
    k: usize,
    x: &[f32],
    y: &mut [f32],
    pool: &ThreadPool,
    isa: Isa,
) {
    check_isa(isa, "gemv_f16_with");
    gemv(w, m, k, x, y, pool, isa);
}

fn gemv(w: &[f16], m: usize, k: usize, x: &[f32], y: &mut [f32], pool: &ThreadPool, isa: Isa) {
    assert_eq!(w.len(), m * k, "gemv_f16: w is not {m}x{k}");
    assert_eq!(x.len(), k, "gemv_f16: x is not {k} long");
    assert_eq!(y.len(), m, "gemv_f16: y is not {m} long");
    run_rows(m * k, pool, y, &|rows, y| {
        rows_f16(&w[rows.start * k..rows.end * k], k, x, y, isa)
    });
}

/// `y[t][o] = sum_j w[o*k + j] * x[t][j]` for `n` activation rows `x` (`[n][k]`) into `y`
/// (`[n][m]`), each row with the bits [`gemv_f16`] gives it alone: the batched decode's LM head,
/// where a sequence's logits must not depend on the rest of the batch. The weights are read
/// from memory once for all rows (unlike `n` calls of [`gemv_f16`]); [`matmul_f16`] is faster
/// for large `n` but sums in another order.
pub fn gemv_f16_rows(
    w: &[f16],
    m: usize,
    k: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    pool: &ThreadPool,
) {
    gemv_f16_rows_with(w, m, k, x, n, y, pool, Isa::detect());
}

/// As [`gemv_f16_rows`] with a chosen instruction set (each row has the bits of
/// [`gemv_f16_with`] on the same set). Panics if this CPU does not support `isa`.
#[allow(clippy::too_many_arguments)]
pub fn gemv_f16_rows_with(
    w: &[f16],
    m: usize,
    k: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    pool: &ThreadPool,
    isa: Isa,
) {
    check_isa(isa, "gemv_f16_rows_with");
    if n == 1 {
        // Decode of one sequence: the GEMV itself, its row split and all.
        assert_eq!(y.len(), m, "gemv_f16_rows: y is not 1x{m}");
        gemv(w, m, k, x, y, pool, isa);
        return;
    }
    // The register-tiled kernel where there is one (AVX-512), else one row at a time.
    #[cfg(target_arch = "x86_64")]
    let multi = (isa == Isa::Avx512 && k > 0).then_some(rows_f16_multi as super::MultiRows<f16>);
    #[cfg(not(target_arch = "x86_64"))]
    let multi = None;
    super::gemv_rows(w, (m, k), x, n, y, pool, isa, rows_f16, multi);
}

/// `y[o] = dot(w row o, x)` for the `y.len()` rows in `w` (`w.len() == y.len() * k`).
fn rows_f16(w: &[f16], k: usize, x: &[f32], y: &mut [f32], isa: Isa) {
    debug_assert!(w.len() == y.len() * k && x.len() == k);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: every caller checked that this CPU supports `isa` (`check_isa` or
        // `Isa::detect`); the slice lengths the kernel relies on are asserted by `gemv`.
        Isa::Avx512 => unsafe { rows_f16_avx512(w, k, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { rows_f16_avx2(w, k, x, y) },
        _ => rows_f16_portable(w, k, x, y),
    }
}

fn rows_f16_portable(w: &[f16], k: usize, x: &[f32], y: &mut [f32]) {
    if k == 0 {
        y.fill(0.0);
        return;
    }
    // Convert a block at a time into a stack buffer, then reuse the f32 dot product.
    const B: usize = 256;
    let mut buf = [0.0f32; B];
    for (yo, row) in y.iter_mut().zip(w.chunks_exact(k)) {
        let mut s = 0.0f32;
        for (wb, xb) in row.chunks(B).zip(x.chunks(B)) {
            for (d, h) in buf.iter_mut().zip(wb) {
                *d = h.to_f32();
            }
            s += dot_portable(&buf[..wb.len()], xb);
        }
        *yo = s;
    }
}

/// # Safety
/// The CPU must support AVX-512 F/BW/VL; `w.len() == y.len() * k`, `x.len() == k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn rows_f16_avx512(w: &[f16], k: usize, x: &[f32], y: &mut [f32]) {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        let wp = w.as_ptr().cast::<u16>();
        // One row at a time: the rows are consecutive, so this is one sequential stream, which
        // measured 97% of the read probe at k = 1536-2560 against 73-80% for four interleaved
        // row streams (`examples`-style A/B on a 196 MB matrix, 2 threads).
        for (o, yo) in y.iter_mut().enumerate() {
            *yo = dot_rows_avx512::<1>(wp.add(o * k), k, x.as_ptr())[0];
        }
    }
}

/// [`rows_f16`] for `n` activation rows `x` (`[n][k]`), each dot product handed to
/// `store(t, o, v)`: register tiles of 2 weight rows x 4 activation rows (the batched LM head
/// was bound by weight conversions repeated per activation row and by activation loads repeated
/// per weight row), every dot product with the bits of `rows_f16` of its row. AVX-512 only:
/// `gemv_f16_rows_with` picks it for `Isa::Avx512` and `k > 0`.
#[cfg(target_arch = "x86_64")]
fn rows_f16_multi(
    w: &[f16],
    k: usize,
    x: &[f32],
    n: usize,
    store: &mut dyn FnMut(usize, usize, f32),
) {
    assert!(k > 0 && w.len().is_multiple_of(k) && x.len() == n * k);
    // SAFETY: the caller selected this kernel for `Isa::Avx512`, whose support `check_isa`
    // checked; the lengths are asserted above and by `gemv_rows`.
    unsafe { rows_f16_multi_avx512(w, k, x, n, store) };
}

/// # Safety
/// AVX-512 F/BW/VL; `w.len() == m * k`, `x.len() == n * k`, `k > 0`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn rows_f16_multi_avx512(
    w: &[f16],
    k: usize,
    x: &[f32],
    n: usize,
    store: &mut dyn FnMut(usize, usize, f32),
) {
    let m = w.len() / k;
    let wp = w.as_ptr().cast::<u16>();
    // Tiles of R weight rows x T activation rows: each weight chunk is converted once for T
    // rows, each activation chunk loaded once for R rows (2 x 4: 16 accumulators, 8 weight
    // and 4 activation registers of the 32).
    macro_rules! tile {
        ($r:literal, $t:literal, $o:expr, $t0:expr) => {{
            let (o, t0) = ($o, $t0);
            let xs: [*const f32; $t] = std::array::from_fn(|i| x[(t0 + i) * k..].as_ptr());
            // SAFETY: rows `o..o + R` of `w` and `t0..t0 + T` of `x` are in bounds (the
            // loops below stay inside `m` and `n`); AVX-512 as this function's contract.
            let d = unsafe { dot_tile_avx512::<$r, $t>(wp.add(o * k), k, xs) };
            for (r, row) in d.iter().enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    store(t0 + i, o + r, v);
                }
            }
        }};
    }
    let mut t0 = 0;
    while t0 < n {
        let left = n - t0;
        let mut o = 0;
        while o + 2 <= m {
            match left {
                1 => tile!(2, 1, o, t0),
                2 => tile!(2, 2, o, t0),
                3 => tile!(2, 3, o, t0),
                _ => tile!(2, 4, o, t0),
            }
            o += 2;
        }
        if o < m {
            match left {
                1 => tile!(1, 1, o, t0),
                2 => tile!(1, 2, o, t0),
                3 => tile!(1, 3, o, t0),
                _ => tile!(1, 4, o, t0),
            }
        }
        t0 += left.min(4);
    }
}

/// The dot products of `R` consecutive f16 rows (`k` apart from `w`) with `T` activation rows,
/// `[R][T]`: every pair with exactly the operations of [`dot_rows_avx512`]`::<1>` (same two
/// accumulators, same order, same reduction), so the same bits; each weight chunk is
/// converted once for all `T` rows and each activation chunk loaded once for all `R` rows.
///
/// # Safety
/// AVX-512 F/BW/VL; `w .. w + R*k` and each `x[i] .. x[i] + k` readable.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::needless_range_loop)] // tile indices read clearer than zipped iterators
unsafe fn dot_tile_avx512<const R: usize, const T: usize>(
    w: *const u16,
    k: usize,
    x: [*const f32; T],
) -> [[f32; T]; R] {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        let mut a0 = [[_mm512_setzero_ps(); T]; R];
        let mut a1 = [[_mm512_setzero_ps(); T]; R];
        let mut j = 0;
        while j + 64 <= k {
            let mut wv = [[_mm512_setzero_ps(); 4]; R];
            for (r, wr) in wv.iter_mut().enumerate() {
                let p = w.add(r * k + j);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_F16).cast());
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_F16 + 32).cast());
                let l0 = _mm512_loadu_si512(p.cast());
                let l1 = _mm512_loadu_si512(p.add(32).cast());
                *wr = [
                    _mm512_cvtph_ps(_mm512_castsi512_si256(l0)),
                    _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(l0)),
                    _mm512_cvtph_ps(_mm512_castsi512_si256(l1)),
                    _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(l1)),
                ];
            }
            for i in 0..T {
                let xi = x[i].add(j);
                let xv = [
                    _mm512_loadu_ps(xi),
                    _mm512_loadu_ps(xi.add(16)),
                    _mm512_loadu_ps(xi.add(32)),
                    _mm512_loadu_ps(xi.add(48)),
                ];
                for r in 0..R {
                    a0[r][i] = _mm512_fmadd_ps(wv[r][0], xv[0], a0[r][i]);
                    a1[r][i] = _mm512_fmadd_ps(wv[r][1], xv[1], a1[r][i]);
                    a0[r][i] = _mm512_fmadd_ps(wv[r][2], xv[2], a0[r][i]);
                    a1[r][i] = _mm512_fmadd_ps(wv[r][3], xv[3], a1[r][i]);
                }
            }
            j += 64;
        }
        while j + 32 <= k {
            for r in 0..R {
                let p = w.add(r * k + j);
                let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
                let w1 = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(16).cast()));
                for i in 0..T {
                    a0[r][i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x[i].add(j)), a0[r][i]);
                    a1[r][i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x[i].add(j + 16)), a1[r][i]);
                }
            }
            j += 32;
        }
        if j + 16 <= k {
            for r in 0..R {
                let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(r * k + j).cast()));
                for i in 0..T {
                    a0[r][i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x[i].add(j)), a0[r][i]);
                }
            }
            j += 16;
        }
        if j < k {
            let mask: __mmask16 = (1u16 << (k - j)) - 1;
            for r in 0..R {
                let w0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w.add(r * k + j).cast()));
                for i in 0..T {
                    let x0 = _mm512_maskz_loadu_ps(mask, x[i].add(j));
                    a1[r][i] = _mm512_fmadd_ps(w0, x0, a1[r][i]);
                }
            }
        }
        let mut out = [[0.0; T]; R];
        for r in 0..R {
            for i in 0..T {
                out[r][i] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r][i], a1[r][i]));
            }
        }
        out
    }
}

/// How far ahead (in f16 elements, i.e. 4 KB) the AVX-512 GEMV prefetches its stream: the
/// best of 512-4096 elements in the same A/B.
const PREFETCH_F16: usize = 2048;

/// Dot products of `R` consecutive f16 rows (`k` apart from `w`, as raw bits) with `x`.
///
/// # Safety
/// AVX-512 F/BW/VL; `w .. w + R*k` and `x .. x + k` readable.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dot_rows_avx512<const R: usize>(w: *const u16, k: usize, x: *const f32) -> [f32; R] {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        let mut a0 = [_mm512_setzero_ps(); R];
        let mut a1 = [_mm512_setzero_ps(); R];
        let mut j = 0;
        // Two cache lines per row per step: with one, the loop issues too few loads per
        // instruction to keep enough DRAM requests in flight (measured: ~25 vs ~40 GB/s).
        while j + 64 <= k {
            let x0 = _mm512_loadu_ps(x.add(j));
            let x1 = _mm512_loadu_ps(x.add(j + 16));
            let x2 = _mm512_loadu_ps(x.add(j + 32));
            let x3 = _mm512_loadu_ps(x.add(j + 48));
            for r in 0..R {
                let wr = w.add(r * k + j);
                // Prefetches never fault, even past the end.
                _mm_prefetch::<_MM_HINT_T0>(wr.wrapping_add(PREFETCH_F16).cast());
                _mm_prefetch::<_MM_HINT_T0>(wr.wrapping_add(PREFETCH_F16 + 32).cast());
                // Whole-line loads, split in registers: one load per cache line.
                let l0 = _mm512_loadu_si512(wr.cast());
                let l1 = _mm512_loadu_si512(wr.add(32).cast());
                let w0 = _mm512_cvtph_ps(_mm512_castsi512_si256(l0));
                let w1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(l0));
                let w2 = _mm512_cvtph_ps(_mm512_castsi512_si256(l1));
                let w3 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(l1));
                a0[r] = _mm512_fmadd_ps(w0, x0, a0[r]);
                a1[r] = _mm512_fmadd_ps(w1, x1, a1[r]);
                a0[r] = _mm512_fmadd_ps(w2, x2, a0[r]);
                a1[r] = _mm512_fmadd_ps(w3, x3, a1[r]);
            }
            j += 64;
        }
        while j + 32 <= k {
            let x0 = _mm512_loadu_ps(x.add(j));
            let x1 = _mm512_loadu_ps(x.add(j + 16));
            for r in 0..R {
                let wr = w.add(r * k + j);
                let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(wr.cast()));
                let w1 = _mm512_cvtph_ps(_mm256_loadu_si256(wr.add(16).cast()));
                a0[r] = _mm512_fmadd_ps(w0, x0, a0[r]);
                a1[r] = _mm512_fmadd_ps(w1, x1, a1[r]);
            }
            j += 32;
        }
        if j + 16 <= k {
            let x0 = _mm512_loadu_ps(x.add(j));
            for (r, a) in a0.iter_mut().enumerate() {
                let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(r * k + j).cast()));
                *a = _mm512_fmadd_ps(w0, x0, *a);
            }
            j += 16;
        }
        if j < k {
            // Masked-off lanes are not read (no fault past the end) and load as zero.
            let mask: __mmask16 = (1u16 << (k - j)) - 1;
            let x0 = _mm512_maskz_loadu_ps(mask, x.add(j));
            for (r, a) in a1.iter_mut().enumerate() {
                let w0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w.add(r * k + j).cast()));
                *a = _mm512_fmadd_ps(w0, x0, *a);
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
/// The CPU must support AVX2, FMA and F16C; `w.len() == y.len() * k`, `x.len() == k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_f16_avx2(w: &[f16], k: usize, x: &[f32], y: &mut [f32]) {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        let m = y.len();
        let mut o = 0;
        while o + 4 <= m {
            y[o..o + 4].copy_from_slice(&dot_rows_avx2::<4>(&w[o * k..(o + 4) * k], k, x));
            o += 4;
        }
        while o < m {
            y[o] = dot_rows_avx2::<1>(&w[o * k..(o + 1) * k], k, x)[0];
            o += 1;
        }
    }
}

/// AVX2 twin of [`dot_rows_avx512`].
///
/// # Safety
/// AVX2, FMA and F16C; `w.len() == R * k`, `x.len() == k`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_avx2<const R: usize>(w: &[f16], k: usize, x: &[f32]) -> [f32; R] {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        debug_assert!(w.len() == R * k && x.len() == k);
        let (wp, xp) = (w.as_ptr().cast::<u16>(), x.as_ptr());
        let mut a0 = [_mm256_setzero_ps(); R];
        let mut a1 = [_mm256_setzero_ps(); R];
        let mut j = 0;
        while j + 16 <= k {
            let x0 = _mm256_loadu_ps(xp.add(j));
            let x1 = _mm256_loadu_ps(xp.add(j + 8));
            for r in 0..R {
                let wr = wp.add(r * k + j);
                let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wr.cast()));
                let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wr.add(8).cast()));
                a0[r] = _mm256_fmadd_ps(w0, x0, a0[r]);
                a1[r] = _mm256_fmadd_ps(w1, x1, a1[r]);
            }
            j += 16;
        }
        if j + 8 <= k {
            let x0 = _mm256_loadu_ps(xp.add(j));
            for (r, a) in a0.iter_mut().enumerate() {
                let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(r * k + j).cast()));
                *a = _mm256_fmadd_ps(w0, x0, *a);
            }
            j += 8;
        }
        if j < k {
            // There is no 16-bit masked load in AVX2: copy the tail into a zeroed buffer.
            let x0 = _mm256_maskload_ps(xp.add(j), tail_mask_avx2(k - j));
            for r in 0..R {
                let mut buf = [f16::ZERO; 8];
                buf[..k - j].copy_from_slice(&w[r * k + j..(r + 1) * k]);
                let w0 = _mm256_cvtph_ps(_mm_loadu_si128(buf.as_ptr().cast()));
                a1[r] = _mm256_fmadd_ps(w0, x0, a1[r]);
            }
        }
        let mut out = [0.0; R];
        for r in 0..R {
            out[r] = hsum_avx2(_mm256_add_ps(a0[r], a1[r]));
        }
        out
    }
}

/// Converts `src` to f32 (exact: every f16 is an f32).
fn f16_to_f32(src: &[f16], dst: &mut [f32], isa: Isa) {
    assert_eq!(src.len(), dst.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports `isa` (checked by every caller); lengths asserted above.
        Isa::Avx512 => unsafe { f16_to_f32_avx512(src, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { f16_to_f32_avx2(src, dst) },
        _ => src.iter().zip(dst).for_each(|(s, d)| *d = s.to_f32()),
    }
}

/// # Safety
/// AVX-512 F/BW/VL; `src.len() == dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn f16_to_f32_avx512(src: &[f16], dst: &mut [f32]) {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        let (s, d, len) = (src.as_ptr().cast::<u16>(), dst.as_mut_ptr(), src.len());
        let mut j = 0;
        while j + 16 <= len {
            _mm512_storeu_ps(
                d.add(j),
                _mm512_cvtph_ps(_mm256_loadu_si256(s.add(j).cast())),
            );
            j += 16;
        }
        if j < len {
            let mask: __mmask16 = (1u16 << (len - j)) - 1;
            let v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, s.add(j).cast()));
            _mm512_mask_storeu_ps(d.add(j), mask, v);
        }
    }
}

/// # Safety
/// AVX2 and F16C; `src.len() == dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_to_f32_avx2(src: &[f16], dst: &mut [f32]) {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        let (s, d, len) = (src.as_ptr().cast::<u16>(), dst.as_mut_ptr(), src.len());
        let mut j = 0;
        while j + 8 <= len {
            _mm256_storeu_ps(d.add(j), _mm256_cvtph_ps(_mm_loadu_si128(s.add(j).cast())));
            j += 8;
        }
        for (s, d) in src[j..].iter().zip(&mut dst[j..]) {
            *d = s.to_f32();
        }
    }
}

/// Weight elements converted to f32 per `gemm` call: big enough that gemm's per-call costs
/// (packing `x`, waking threads) stay small, small enough to keep the scratch in L2/L3.
const CHUNK_ELEMS: usize = 1 << 20;

thread_local! {
    /// Reused f32 scratch for [`f32_blocks`], so repeated prefill calls do not page-fault fresh
    /// memory each time (at most `CHUNK_ELEMS` floats, 4 MiB, per calling thread).
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Hands `f(r0, block)` the rows of `w` (k > 0 wide) converted to f32 a cache-sized block at
/// a time, `r0` being the block's first row, in this thread's reused scratch.
fn f32_blocks(w: &[f16], k: usize, isa: Isa, f: &mut dyn FnMut(usize, &[f32])) {
    let rows = w.len() / k;
    let chunk_rows = (CHUNK_ELEMS / k).max(16).min(rows);
    // Taken out of the thread-local (not borrowed) so a re-entrant call cannot conflict.
    let mut scratch = SCRATCH.take();
    scratch.resize(scratch.len().max(chunk_rows * k), 0.0);
    let mut r0 = 0;
    while r0 < rows {
        let mb = chunk_rows.min(rows - r0);
        let buf = &mut scratch[..mb * k];
        f16_to_f32(&w[r0 * k..(r0 + mb) * k], buf, isa);
        f(r0, buf);
        r0 += mb;
    }
    if scratch.len() <= CHUNK_ELEMS {
        SCRATCH.set(scratch);
    }
}

/// `y[n][m] = x[n][k] * W^T` with f16 weights on `pool`: our GEMV for one token; for more, our
/// AVX-512 micro-kernel (`fp16_gemm`), or elsewhere blocks of W converted to f32 (exactly) and
/// multiplied by the `gemm` crate's f32 kernel. gemm's own f16 path would round `x` and `y` to
/// f16, losing about three decimal digits against the f32 GEMV.
pub fn matmul_f16(
    w: &[f16],
    m: usize,
    k: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    pool: &ThreadPool,
) {
    matmul(w, m, k, x, n, y, pool, Isa::detect());
}

/// As [`matmul_f16`] with a chosen instruction set (for prefill, [`Isa::Avx512`] selects the
/// micro-kernel). Results agree with an f64 reference to f32 rounding, not bit for bit across
/// sets. Panics if this CPU does not support `isa`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_f16_with(
    w: &[f16],
    m: usize,
    k: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    pool: &ThreadPool,
    isa: Isa,
) {
    check_isa(isa, "matmul_f16_with");
    matmul(w, m, k, x, n, y, pool, isa);
}

#[allow(clippy::too_many_arguments)]
fn matmul(
    w: &[f16],
    m: usize,
    k: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    pool: &ThreadPool,
    isa: Isa,
) {
    if n == 1 {
        gemv(w, m, k, x, y, pool, isa);
        return;
    }
    assert_eq!(w.len(), m * k, "matmul_f16: w is not {m}x{k}");
    assert_eq!(x.len(), n * k, "matmul_f16: x is not {n}x{k}");
    assert_eq!(y.len(), n * m, "matmul_f16: y is not {n}x{m}");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        super::run_columns((n, m, k), 4, y, pool, &|mut y| {
            let cols = y.cols();
            let w = &w[cols.start * k..cols.end * k];
            // SAFETY: the CPU has AVX-512 (checked by every caller); `w` holds rows `cols` of W
            // and `x` all n*k inputs (asserted above); the piece owns columns `cols` of the n
            // rows of y, `y.row_len() == m` apart.
            unsafe {
                super::fp16_gemm::gemm_rows(
                    w.as_ptr().cast::<u16>(),
                    cols.len(),
                    k,
                    x.as_ptr(),
                    n,
                    y.as_mut_ptr(),
                    m,
                )
            }
        });
        return;
    }
    super::run_columns((n, m, k), 2, y, pool, &|mut y| {
        let cols = y.cols();
        let yp = y.as_mut_ptr();
        f32_blocks(&w[cols.start * k..cols.end * k], k, isa, &mut |r0, buf| {
            // SAFETY: `buf` holds rows `cols.start + r0 ..` of W in f32 and `x` all n*k inputs;
            // the piece owns columns `cols` of the n rows of y (`m` apart), and this block's
            // columns `cols.start + r0 .. + buf.len() / k` are among them.
            unsafe { gemm_xwt_raw(buf.as_ptr(), buf.len() / k, k, x.as_ptr(), n, yp.add(r0), m) }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::super::fp32::tests::{check, random_f32, reference, shapes};
    use super::*;
    use crate::rng::Rng;

    fn random_f16(rng: &mut Rng, len: usize) -> Vec<f16> {
        random_f32(rng, len)
            .into_iter()
            .map(f16::from_f32)
            .collect()
    }

    fn to_f64(w: &[f16]) -> Vec<f64> {
        w.iter().map(|h| h.to_f64()).collect()
    }

    #[test]
    fn gemv_matches_reference_on_every_isa() {
        let mut rng = Rng::new(3);
        let pools = [ThreadPool::new(1), ThreadPool::new(2)];
        for (m, k) in shapes(&mut rng) {
            let w = random_f16(&mut rng, m * k);
            let x = random_f32(&mut rng, k);
            let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let refs = reference(&to_f64(&w), m, k, &xd, 1);
            for isa in Isa::available() {
                for pool in &pools {
                    let mut y = vec![f32::NAN; m];
                    gemv_f16_with(&w, m, k, &x, &mut y, pool, isa);
                    check(&y, &refs, &format!("gemv_f16 {m}x{k} {isa:?} {pool:?}"));
                }
            }
        }
    }

    #[test]
    fn conversion_is_exact_on_every_isa() {
        let mut rng = Rng::new(4);
        // Every bit pattern of one exponent range plus specials, at ragged lengths.
        let mut src: Vec<f16> = (0..40)
            .map(|_| f16::from_bits(rng.next_u64() as u16))
            .collect();
        src.extend([
            f16::INFINITY,
            f16::NEG_INFINITY,
            f16::MIN_POSITIVE_SUBNORMAL,
            f16::MAX,
            f16::ZERO,
            f16::NEG_ZERO,
        ]);
        for len in [0, 1, 7, 8, 15, 16, 17, 46] {
            for isa in Isa::available() {
                let mut dst = vec![0.0f32; len];
                f16_to_f32(&src[..len], &mut dst, isa);
                for (s, d) in src.iter().zip(&dst) {
                    let e = s.to_f32();
                    assert!(
                        e.to_bits() == d.to_bits() || (e.is_nan() && d.is_nan()),
                        "{isa:?}: {s} -> {d}"
                    );
                }
            }
        }
    }

    #[test]
    fn prefill_tiles_cover_ragged_rows_tokens_and_k_across_row_blocks() {
        // k = 5000: row blocks of 24 rows (several per task), a 4-row tile tail of 1 row,
        // a 6-token tile tail of 1 token and a k tail of 8.
        let mut rng = Rng::new(9);
        let (m, k, n) = (101, 5000, 7);
        let w = random_f16(&mut rng, m * k);
        let x = random_f32(&mut rng, n * k);
        let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let refs = reference(&to_f64(&w), m, k, &xd, n);
        for threads in [1, 2, 3] {
            let mut y = vec![f32::NAN; n * m];
            matmul_f16(&w, m, k, &x, n, &mut y, &ThreadPool::new(threads));
            check(
                &y,
                &refs,
                &format!("matmul_f16 {n}x{m}x{k} threads {threads}"),
            );
        }
    }

    #[test]
    fn matmul_matches_reference_on_every_isa() {
        let mut rng = Rng::new(5);
        let pools = [ThreadPool::new(1), ThreadPool::new(2)];
        let mut cases = shapes(&mut rng);
        // Several conversion chunks (26 rows each) with a ragged last one.
        cases.push((60, CHUNK_ELEMS / 26 - 1));
        for (i, (m, k)) in cases.into_iter().enumerate() {
            let n = [1, 2, 3, 5, 9][i % 5];
            let w = random_f16(&mut rng, m * k);
            let x = random_f32(&mut rng, n * k);
            let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let refs = reference(&to_f64(&w), m, k, &xd, n);
            let mut y = vec![f32::NAN; n * m];
            matmul_f16(&w, m, k, &x, n, &mut y, &pools[1]);
            check(&y, &refs, &format!("matmul_f16 {n}x{m}x{k}"));
            for isa in Isa::available() {
                for pool in &pools {
                    let mut y = vec![f32::NAN; n * m];
                    matmul_f16_with(&w, m, k, &x, n, &mut y, pool, isa);
                    check(
                        &y,
                        &refs,
                        &format!("matmul_f16 {n}x{m}x{k} {isa:?} {pool:?}"),
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// The prefill tiles (4 rows x 6 tokens x 16 k on AVX-512) at ragged rows, tokens and
        /// k, and the f32-block path elsewhere, against the f64 reference on every set.
        #[test]
        fn prefill_matches_reference_at_ragged_shapes(
            m in 1usize..70,
            k in 1usize..100,
            n in 2usize..16,
            threads in 1usize..4,
            seed in 0u64..1 << 32,
        ) {
            let mut rng = Rng::new(seed);
            let w = random_f16(&mut rng, m * k);
            let x = random_f32(&mut rng, n * k);
            let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let refs = reference(&to_f64(&w), m, k, &xd, n);
            let pool = ThreadPool::new(threads);
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; n * m];
                matmul_f16_with(&w, m, k, &x, n, &mut y, &pool, isa);
                check(&y, &refs, &format!("matmul_f16 {n}x{m}x{k} {isa:?} {threads} threads"));
            }
        }
    }
}
