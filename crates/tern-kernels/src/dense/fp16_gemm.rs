//! AVX-512 f16-weight GEMM for prefill, `y[t][o] = sum_j x[t][j] * W[o][j]`, without converting
//! W to an f32 copy first.
//!
//! A tile is R = 4 weight rows x T = 6 tokens of f32 accumulators, each a vector over 16
//! consecutive k: per 16 k the tile loads (and widens, `vcvtph2ps`) 4 weight vectors and 6
//! activation vectors and issues 24 FMAs, so it is FMA-bound; the 16 lanes are added up once,
//! at the end of k. Rows are taken in blocks sized to keep the block's weights in L2 while
//! every token tile passes over them, and each token tile's activations stay in L2 across the
//! block's row tiles. Ragged rows, tokens and k are handled by smaller tiles and masked loads.
//!
//! The results are those of an f32 dot product in another order than the reference's: the
//! tests bound the error as for any summation order.

// The register tile is indexed by (row, token) in two arrays at once; index loops read more
// plainly than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

/// Rows per tile.
const R: usize = 4;
/// Tokens per tile.
const T: usize = 6;
/// Bytes of weights a row block keeps in L2 (half of this machine class's 1 MiB L2, leaving
/// room for the token tiles' activations).
const BLOCK_BYTES: usize = 256 << 10;

/// `y[t * ldy + o] = sum_j x[t * k + j] * w[o * k + j]` for `t < n`, `o < m`.
///
/// # Safety
/// AVX-512 F/BW/VL; `w` readable for `m * k` f16 (as bits), `x` for `n * k` floats, `y`
/// writable at every `t * ldy + o` above, and nobody else writing those elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn gemm_rows(
    w: *const u16,
    m: usize,
    k: usize,
    x: *const f32,
    n: usize,
    y: *mut f32,
    ldy: usize,
) {
    let block_rows = (BLOCK_BYTES / (2 * k.max(1))).max(R) / R * R;
    let mut r0 = 0;
    while r0 < m {
        let rb = block_rows.min(m - r0);
        let mut t0 = 0;
        while t0 < n {
            let tt = T.min(n - t0);
            let mut r = r0;
            while r < r0 + rb {
                let rr = R.min(r0 + rb - r);
                // SAFETY: rows r..r+rr < m and tokens t0..t0+tt < n, within the caller's bounds.
                unsafe {
                    dispatch(
                        rr,
                        tt,
                        w.add(r * k),
                        k,
                        x.add(t0 * k),
                        y.add(t0 * ldy + r),
                        ldy,
                    )
                };
                r += rr;
            }
            t0 += tt;
        }
        r0 += rb;
    }
}

/// Picks the monomorphised tile for `rr` rows x `tt` tokens.
#[inline(always)]
unsafe fn dispatch(
    rr: usize,
    tt: usize,
    w: *const u16,
    k: usize,
    x: *const f32,
    y: *mut f32,
    ldy: usize,
) {
    macro_rules! go {
        ($($r:literal, $t:literal);*) => {
            match (rr, tt) {
                $(($r, $t) => tile::<$r, $t>(w, k, x, y, ldy),)*
                _ => unreachable!("f16 gemm tile {rr}x{tt}"),
            }
        };
    }
    // SAFETY: forwarded from `gemm_rows`.
    unsafe {
        go!(4,1; 4,2; 4,3; 4,4; 4,5; 4,6; 3,1; 3,2; 3,3; 3,4; 3,5; 3,6;
            2,1; 2,2; 2,3; 2,4; 2,5; 2,6; 1,1; 1,2; 1,3; 1,4; 1,5; 1,6)
    }
}

/// One tile: rows `w .. w + RR*k`, tokens `x .. x + TT*k`, outputs `y[t * ldy + r]`.
#[inline(always)]
unsafe fn tile<const RR: usize, const TT: usize>(
    w: *const u16,
    k: usize,
    x: *const f32,
    y: *mut f32,
    ldy: usize,
) {
    // SAFETY: reached only from `gemm_rows` (AVX-512 F/BW/VL present, `w`, `x`, `y` as its
    // contract says). All loads: row r's elements j < k lie at w + r*k + j and token t's at
    // x + t*k + j; the full-width loop stays below k and the tail is masked to j < k.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); TT]; RR];
        let mut j = 0;
        while j + 16 <= k {
            let mut wv = [_mm512_setzero_ps(); RR];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(r * k + j).cast()));
            }
            for t in 0..TT {
                let xv = _mm512_loadu_ps(x.add(t * k + j));
                for r in 0..RR {
                    acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
            j += 16;
        }
        if j < k {
            let mask: __mmask16 = (1u16 << (k - j)) - 1;
            let mut wv = [_mm512_setzero_ps(); RR];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w.add(r * k + j).cast()));
            }
            for t in 0..TT {
                let xv = _mm512_maskz_loadu_ps(mask, x.add(t * k + j));
                for r in 0..RR {
                    acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (t, &a) in row.iter().enumerate() {
                *y.add(t * ldy + r) = _mm512_reduce_add_ps(a);
            }
        }
    }
}
