//! AVX2 kernels for CPUs without AVX-512 VNNI: `vpmaddubsw` + `vpmaddwd` on unpacked codes.
//!
//! A 256-bit vector holds half a block (8 rows x 4 k). Products of one block's planes are
//! summed in i16 first: each `vpmaddubsw` pair is at most 2*128 + 2*128 = 512 in magnitude and
//! five planes add up to 2560, far from i16 overflow; then one `vpmaddwd` widens to i32.

// Register tiles are indexed by (group, token, plane) in several arrays at once; index loops
// read more plainly than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use super::{Job, Layout, BLOCK_BYTES, GROUP_ROWS};
use std::arch::x86_64::*;

/// # Safety
/// The CPU must support AVX2; `job` as produced by `matmul_with`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn run(job: &mut Job) {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        let n = job.x.n;
        let b3 = job.w.layout == Layout::Tern3;
        for g in job.groups() {
            let mut t = 0;
            while t + 2 <= n {
                if b3 {
                    tile::<true, 2>(job, g, t)
                } else {
                    tile::<false, 2>(job, g, t)
                }
                t += 2;
            }
            if t < n {
                if b3 {
                    tile::<true, 1>(job, g, t)
                } else {
                    tile::<false, 1>(job, g, t)
                }
            }
        }
    }
}

/// Unsigned `p >= k` per byte as 0xFF / 0x00.
#[inline(always)]
unsafe fn ge_u8(p: __m256i, k: u8) -> __m256i {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe { _mm256_cmpeq_epi8(_mm256_max_epu8(p, _mm256_set1_epi8(k as i8)), p) }
}

/// One group (two half-blocks) x T tokens.
#[inline(always)]
unsafe fn tile<const B3: bool, const T: usize>(job: &mut Job, g: usize, t0: usize) {
    // SAFETY: this function's own contract (its callers guarantee the CPU features it
    // is compiled for and the in-bounds pointers and lengths its doc states).
    unsafe {
        let blocks = job.w.blocks();
        let bc = if B3 { 20 } else { 16 };
        let stride = job.x.stride;
        let wbase = job.w.data.as_slice().as_ptr().add(g * blocks * BLOCK_BYTES);
        let xbase = job.x.bytes().as_ptr().add(t0 * stride);
        let m3 = _mm256_set1_epi8(3);
        let ones16 = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); T]; 2];
        for b in 0..blocks {
            // SAFETY: block (g, b) is inside the packed data; 64-byte aligned halves.
            let mut p = [
                _mm256_load_si256(wbase.add(b * BLOCK_BYTES).cast()),
                _mm256_load_si256(wbase.add(b * BLOCK_BYTES + 32).cast()),
            ];
            let mut s16 = [[_mm256_setzero_si256(); T]; 2];
            let planes = if B3 { 5 } else { 4 };
            for i in 0..planes {
                let mut c = [_mm256_setzero_si256(); 2];
                for h in 0..2 {
                    if B3 {
                        // Top base-3 digit: 0 - [p >= 86] - [p >= 171] (masks are -1).
                        let z = _mm256_setzero_si256();
                        c[h] =
                            _mm256_sub_epi8(_mm256_sub_epi8(z, ge_u8(p[h], 86)), ge_u8(p[h], 171));
                        p[h] = _mm256_add_epi8(_mm256_add_epi8(p[h], p[h]), p[h]);
                    } else {
                        let s = match i {
                            0 => p[h],
                            1 => _mm256_srli_epi16::<2>(p[h]),
                            2 => _mm256_srli_epi16::<4>(p[h]),
                            _ => _mm256_srli_epi16::<6>(p[h]),
                        };
                        c[h] = _mm256_and_si256(s, m3);
                    }
                }
                for t in 0..T {
                    // Zero-padded activation rows make the quad always in bounds.
                    let quad = xbase
                        .add(t * stride + b * bc + 4 * i)
                        .cast::<i32>()
                        .read_unaligned();
                    let xb = _mm256_set1_epi32(quad);
                    for h in 0..2 {
                        s16[h][t] = _mm256_add_epi16(s16[h][t], _mm256_maddubs_epi16(c[h], xb));
                    }
                }
            }
            for h in 0..2 {
                for t in 0..T {
                    acc[h][t] = _mm256_add_epi32(acc[h][t], _mm256_madd_epi16(s16[h][t], ones16));
                }
            }
        }
        let rows = job.rows_in(g);
        let gamma = _mm256_set1_ps(job.w.gamma);
        for t in 0..T {
            let tt = t0 + t;
            let mut out = [0f32; GROUP_ROWS];
            for h in 0..2 {
                // Same operations, same order as `Job::finish`.
                let v = _mm256_sub_epi32(acc[h][t], _mm256_set1_epi32(job.x.sums[tt]));
                let y = _mm256_mul_ps(
                    _mm256_div_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(job.x.scales[tt])),
                    gamma,
                );
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * h), y);
            }
            job.out_group(tt, g).copy_from_slice(&out[..rows]);
        }
    }
}
