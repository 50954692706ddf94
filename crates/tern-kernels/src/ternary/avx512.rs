//! AVX-512 VNNI kernels: `vpdpbusd` on unpacked codes, 16 rows per vector.
//!
//! A tile is G groups (16 rows each) x T tokens of i32 accumulators held in registers for the
//! whole k loop; each block's codes are unpacked once and reused by all T tokens, each
//! broadcast activation quad by all G groups. Decode (T = 1) uses G = 1 with four accumulators
//! (one per code plane, so four independent `vpdpbusd` chains): one group at a time makes a
//! task's weights a single sequential stream, which measured 10-20% faster than four
//! interleaved group streams (G = 4) on 2B4T shapes. Prefill uses G = 2, T = 8
//! (16 accumulators + 8 code vectors).

// Register tiles are indexed by (group, token, plane) in several arrays at once; index loops
// read more plainly than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::{Job, Layout, BLOCK_BYTES, GROUP_ROWS};
use std::arch::x86_64::*;

/// Tokens per tile for GEMM.
const T_GEMM: usize = 8;

/// How far ahead (bytes) the decode kernel prefetches its stream (best of 1-4 KB measured).
const PREFETCH_AHEAD: usize = 4096;

/// # Safety
/// The CPU must support AVX-512 F/BW/VNNI; `job` as produced by `matmul_with`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn run(job: &mut Job) {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        let n = job.x.n;
        let (start, end) = (job.groups().start, job.groups().end);
        let mut tile = |g, gs, t, ts| match job.w.layout {
            Layout::Tern2 => dispatch::<false>(job, g, gs, t, ts),
            Layout::Tern3 => dispatch::<true>(job, g, gs, t, ts),
        };
        if n == 1 {
            // One group at a time (see the module docs).
            for g in start..end {
                tile(g, 1, 0, 1);
            }
            return;
        }
        let mut g = start;
        while g < end {
            let gs = if g + 2 <= end { 2 } else { 1 };
            let mut t = 0;
            while t < n {
                let ts = (n - t).min(T_GEMM);
                tile(g, gs, t, ts);
                t += ts;
            }
            g += gs;
        }
    }
}

/// Picks the monomorphised tile for `gs` groups x `ts` tokens.
#[inline(always)]
unsafe fn dispatch<const B3: bool>(job: &mut Job, g: usize, gs: usize, t: usize, ts: usize) {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        macro_rules! go {
            ($($gs:literal, $ts:literal);*) => {
                match (gs, ts) {
                    $(($gs, $ts) => tile::<B3, $gs, $ts, { if $ts == 1 { 4 / $gs } else { 1 } }>(job, g, t),)*
                    _ => unreachable!("tile {gs}x{ts}"),
                }
            };
        }
        go!(1,1; 2,1; 2,2; 2,3; 2,4; 2,5; 2,6; 2,7; 2,8; 1,2; 1,3; 1,4; 1,5; 1,6; 1,7; 1,8)
    }
}

/// Codes of plane `i` of a tern2 block (`p >> 2i & 3`).
#[inline(always)]
unsafe fn tern2_plane(p: __m512i, i: usize) -> __m512i {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        let m3 = _mm512_set1_epi8(3);
        // Shifting 16-bit lanes moves bits across the byte boundary, but the AND keeps only the
        // two bits that came from the byte itself.
        let s = match i {
            0 => p,
            1 => _mm512_srli_epi16::<2>(p),
            2 => _mm512_srli_epi16::<4>(p),
            _ => _mm512_srli_epi16::<6>(p),
        };
        _mm512_and_si512(s, m3)
    }
}

/// Top base-3 digit of each byte: `(p * 3) >> 8`, i.e. 0 below 86, 1 below 171, else 2.
#[inline(always)]
unsafe fn base3_top(p: __m512i) -> __m512i {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        let k1 = _mm512_cmpge_epu8_mask(p, _mm512_set1_epi8(86));
        let k2 = _mm512_cmpge_epu8_mask(p, _mm512_set1_epi8(171u8 as i8));
        let c = _mm512_maskz_mov_epi8(k1, _mm512_set1_epi8(1));
        _mm512_mask_mov_epi8(c, k2, _mm512_set1_epi8(2))
    }
}

#[inline(always)]
unsafe fn times3(p: __m512i) -> __m512i {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe { _mm512_add_epi8(_mm512_add_epi8(p, p), p) }
}

#[inline(always)]
unsafe fn tile<const B3: bool, const G: usize, const T: usize, const P: usize>(
    job: &mut Job,
    g0: usize,
    t0: usize,
) {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        let blocks = job.w.blocks();
        let bc = if B3 { 20 } else { 16 };
        let stride = job.x.stride;
        let wbase = job
            .w
            .data
            .as_slice()
            .as_ptr()
            .add(g0 * blocks * BLOCK_BYTES);
        let xbase = job.x.bytes().as_ptr().add(t0 * stride);
        // P accumulators per (group, token): plane i adds into number i % P, so a one-token tile
        // runs P independent dpbusd chains per group instead of one latency-bound chain (the
        // dispatch gives one-token tiles 4 / G of them).
        let mut acc = [[[_mm512_setzero_si512(); P]; T]; G];
        for b in 0..blocks {
            let mut p = [_mm512_setzero_si512(); G];
            for (gi, p) in p.iter_mut().enumerate() {
                // SAFETY (of the loads here and below): block (g0 + gi, b) lies inside the packed
                // data because g0 + G <= groups; blocks are 64-byte aligned (AlignedBytes).
                let src = wbase.add((gi * blocks + b) * BLOCK_BYTES);
                if T == 1 {
                    // Decode is a DRAM stream per group; the hardware prefetcher alone leaves it
                    // latency-bound, so ask for lines a few blocks ahead. Prefetches never fault,
                    // so running past the end of the data is harmless.
                    _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(PREFETCH_AHEAD).cast());
                }
                *p = _mm512_load_si512(src.cast());
            }
            let planes = if B3 { 5 } else { 4 };
            for i in 0..planes {
                let mut c = [_mm512_setzero_si512(); G];
                for gi in 0..G {
                    if B3 {
                        c[gi] = base3_top(p[gi]);
                        if i < 4 {
                            p[gi] = times3(p[gi]);
                        }
                    } else {
                        c[gi] = tern2_plane(p[gi], i);
                    }
                }
                for t in 0..T {
                    // Activation rows are zero-padded to `stride` >= blocks * bc, so the quad at
                    // b * bc + 4 i is always in bounds.
                    let quad = xbase
                        .add(t * stride + b * bc + 4 * i)
                        .cast::<i32>()
                        .read_unaligned();
                    let xb = _mm512_set1_epi32(quad);
                    for gi in 0..G {
                        acc[gi][t][i % P] = _mm512_dpbusd_epi32(acc[gi][t][i % P], c[gi], xb);
                    }
                }
            }
        }
        let gamma = _mm512_set1_ps(job.w.gamma);
        for (gi, acc) in acc.iter().enumerate() {
            let g = g0 + gi;
            let rows = job.rows_in(g);
            for (t, parts) in acc.iter().enumerate() {
                // Integer sums: the order of the P parts does not change the bits.
                let a = parts[1..]
                    .iter()
                    .fold(parts[0], |s, &p| _mm512_add_epi32(s, p));
                let tt = t0 + t;
                // Same operations, same order as `Job::finish`.
                let v = _mm512_sub_epi32(a, _mm512_set1_epi32(job.x.sums[tt]));
                let y = _mm512_mul_ps(
                    _mm512_div_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(job.x.scales[tt])),
                    gamma,
                );
                // The store writes exactly the `rows` floats of this task's slice `dst`.
                let dst = job.out_group(tt, g).as_mut_ptr();
                if rows == GROUP_ROWS {
                    _mm512_storeu_ps(dst, y);
                } else {
                    _mm512_mask_storeu_ps(dst, (1u16 << rows) - 1, y);
                }
            }
        }
    }
}
