//! The lookup-table family (T-MAC / bitnet.cpp TL1 style), kept as a measured experiment.
//!
//! Two ternary weights form a 4-bit index `c0 + 3 c1` (codes `c = q + 1`); per token and per
//! column pair a 16-entry table holds `q0 x0 + q1 x1` for every index, so the GEMV is table
//! lookups (`vpshufb`) and additions, with no multiplication at all. Sums of two int8 products
//! need 9 bits plus sign, so each table is stored as two byte planes (low and high byte of
//! an i16) and the lookups are recombined into i16 lanes, flushed to i32 before they can
//! overflow.
//!
//! Layout `lut2` (2 bits per weight): groups of 64 rows; a 64-byte block covers 64 rows x 4
//! columns, byte `r` holding the index of columns (4b, 4b+1) in its low nibble and of
//! (4b+2, 4b+3) in its high nibble.
//!
//! Measured against the `vpdpbusd` kernels in docs/kernels.md: on a CPU with AVX-512 VNNI the
//! multiply-accumulate family needs fewer instructions per weight, so `tern2` stays the
//! default and this kernel is only reachable from `tern bench kernels --kernels lut2`.

use crate::actquant::QuantizedActs;
use crate::aligned::AlignedBytes;
use crate::cpu::Isa;
use crate::formats::TernaryMatrix;
use crate::pool::{Chunks, ThreadPool};

/// Rows per group: one byte per row in a 64-byte vector.
pub const LUT_ROWS: usize = 64;
/// Columns per block (two pairs).
const BLOCK_COLS: usize = 4;
/// Blocks between i16 -> i32 flushes: each block adds at most 2 * 256 to a lane.
const FLUSH_BLOCKS: usize = 60;

/// Ternary weights in the `lut2` layout.
#[derive(Clone, Debug)]
pub struct LutTernary {
    rows: usize,
    cols: usize,
    gamma: f32,
    data: AlignedBytes,
}

/// Per-token tables: for each column pair, 16 low bytes then 16 high bytes of the i16 entries.
#[derive(Default, Debug)]
pub struct LutTables {
    bytes: Vec<u8>,
}

impl LutTernary {
    pub fn pack(m: &TernaryMatrix) -> LutTernary {
        let groups = m.rows.div_ceil(LUT_ROWS);
        let blocks = m.cols.div_ceil(BLOCK_COLS);
        let mut data = AlignedBytes::zeroed(groups * blocks * 64);
        let code = |r: usize, k: usize| -> u8 {
            if r < m.rows && k < m.cols {
                (m.values[r * m.cols + k] + 1) as u8
            } else {
                1
            }
        };
        let out = data.as_mut_slice();
        for g in 0..groups {
            for b in 0..blocks {
                for l in 0..LUT_ROWS {
                    let r = g * LUT_ROWS + l;
                    let k = b * BLOCK_COLS;
                    let lo = code(r, k) + 3 * code(r, k + 1);
                    let hi = code(r, k + 2) + 3 * code(r, k + 3);
                    out[(g * blocks + b) * 64 + l] = lo | hi << 4;
                }
            }
        }
        LutTernary {
            rows: m.rows,
            cols: m.cols,
            gamma: m.gamma,
            data,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }
    fn blocks(&self) -> usize {
        self.cols.div_ceil(BLOCK_COLS)
    }

    /// Builds token `t`'s tables (reused across every matrix that reads the same input).
    pub fn build_tables(x: &QuantizedActs, t: usize, tables: &mut LutTables) {
        let row = x.row_padded(t);
        let pairs = x.k.div_ceil(BLOCK_COLS) * 2;
        tables.bytes.clear();
        tables.bytes.resize(pairs * 32, 0);
        for (j, tab) in tables.bytes.chunks_exact_mut(32).enumerate() {
            let (x0, x1) = (row[2 * j] as i16, row[2 * j + 1] as i16);
            for c1 in 0..3i16 {
                for c0 in 0..3i16 {
                    let v = (c0 - 1) * x0 + (c1 - 1) * x1;
                    let idx = (c0 + 3 * c1) as usize;
                    tab[idx] = v as u8;
                    tab[16 + idx] = (v >> 8) as u8;
                }
            }
        }
    }

    /// `y[o] = (sum_k x_q[t][k] q[o][k]) / s[t] * gamma` for one token, every row.
    pub fn gemv(
        &self,
        x: &QuantizedActs,
        t: usize,
        tables: &LutTables,
        y: &mut [f32],
        pool: &ThreadPool,
        isa: Isa,
    ) {
        assert!(
            isa.is_supported(),
            "{} kernels are not supported on this CPU",
            isa.name()
        );
        assert_eq!(
            x.k, self.cols,
            "lut gemv: activations have k={}, weights {} columns",
            x.k, self.cols
        );
        assert_eq!(
            y.len(),
            self.rows,
            "lut gemv: output has {} floats, expected {}",
            y.len(),
            self.rows
        );
        assert_eq!(
            tables.bytes.len(),
            self.blocks() * 64,
            "lut gemv: tables built for another width"
        );
        let groups = self.rows.div_ceil(LUT_ROWS);
        let tasks = if pool.threads() == 1 || groups < 2 {
            1
        } else {
            pool.threads().min(groups)
        };
        // Table entries hold q * x directly, so there is no code offset to remove.
        let scale = x.scales[t];
        // Tasks own disjoint runs of groups, i.e. of `LUT_ROWS` output rows.
        pool.run_split(tasks, Chunks::new(y, LUT_ROWS), &|_, (range, out)| {
            for g in range.clone() {
                let mut acc = [0i32; LUT_ROWS];
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: support for `isa` was asserted above.
                    Isa::Avx512 => unsafe { self.group_avx512(g, tables, &mut acc) },
                    _ => self.group_portable(g, tables, &mut acc),
                }
                let rows = (self.rows - g * LUT_ROWS).min(LUT_ROWS);
                let out = &mut out[(g - range.start) * LUT_ROWS..][..rows];
                for (o, &a) in out.iter_mut().zip(&acc) {
                    *o = (a as f32 / scale) * self.gamma;
                }
            }
        });
    }

    fn group_portable(&self, g: usize, tables: &LutTables, acc: &mut [i32; LUT_ROWS]) {
        let blocks = self.blocks();
        let data = &self.data.as_slice()[g * blocks * 64..(g + 1) * blocks * 64];
        for (b, block) in data.chunks_exact(64).enumerate() {
            for (l, &byte) in block.iter().enumerate() {
                for (half, idx) in [(0, byte & 15), (1, byte >> 4)] {
                    let tab = &tables.bytes[(2 * b + half) * 32..][..32];
                    let v = i16::from_le_bytes([tab[idx as usize], tab[16 + idx as usize]]);
                    acc[l] += v as i32;
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn group_avx512(&self, g: usize, tables: &LutTables, acc: &mut [i32; LUT_ROWS]) {
        // SAFETY: the CPU has AVX-512 F/BW (checked by the caller, `gemv`) and g < groups:
        // block (g, bb) lies inside the packed data, 64-byte aligned (AlignedBytes), and its
        // two 32-byte tables lie inside `tables` (length checked by `gemv`).
        unsafe {
            use std::arch::x86_64::*;
            let blocks = self.blocks();
            let w = self.data.as_slice().as_ptr().add(g * blocks * 64);
            let tab = tables.bytes.as_ptr();
            let nib = _mm512_set1_epi8(15);
            // i32 accumulators: rows in the order the unpacks produce (fixed up at the end).
            let mut wide = [_mm512_setzero_si512(); 4];
            let mut b = 0;
            while b < blocks {
                let end = (b + FLUSH_BLOCKS).min(blocks);
                // Lane L of `lo16` holds rows 16L..16L+8, of `hi16` rows 16L+8..16L+16, as i16.
                let (mut lo16, mut hi16) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for bb in b..end {
                    // SAFETY: block (g, bb) is inside the packed data; its tables are inside
                    // `tables` (length checked by `gemv`).
                    let p = _mm512_load_si512(w.add(bb * 64).cast());
                    let idx = [
                        _mm512_and_si512(p, nib),
                        _mm512_and_si512(_mm512_srli_epi16::<4>(p), nib),
                    ];
                    for (half, idx) in idx.into_iter().enumerate() {
                        let t = tab.add((2 * bb + half) * 32);
                        let tlo = _mm512_broadcast_i32x4(_mm_loadu_si128(t.cast()));
                        let thi = _mm512_broadcast_i32x4(_mm_loadu_si128(t.add(16).cast()));
                        let vlo = _mm512_shuffle_epi8(tlo, idx);
                        let vhi = _mm512_shuffle_epi8(thi, idx);
                        lo16 = _mm512_add_epi16(lo16, _mm512_unpacklo_epi8(vlo, vhi));
                        hi16 = _mm512_add_epi16(hi16, _mm512_unpackhi_epi8(vlo, vhi));
                    }
                }
                wide[0] =
                    _mm512_add_epi32(wide[0], _mm512_cvtepi16_epi32(_mm512_castsi512_si256(lo16)));
                wide[1] = _mm512_add_epi32(
                    wide[1],
                    _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(lo16)),
                );
                wide[2] =
                    _mm512_add_epi32(wide[2], _mm512_cvtepi16_epi32(_mm512_castsi512_si256(hi16)));
                wide[3] = _mm512_add_epi32(
                    wide[3],
                    _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(hi16)),
                );
                b = end;
            }
            let mut lanes = [[0i32; 16]; 4];
            for (dst, v) in lanes.iter_mut().zip(wide) {
                _mm512_storeu_si512(dst.as_mut_ptr().cast(), v);
            }
            // wide[0] = lo16 lanes 0,1 (rows 0..8, 16..24); wide[1] = lanes 2,3 (32..40, 48..56);
            // wide[2], wide[3] the same for rows +8.
            for (i, lane) in lanes.iter().enumerate() {
                let plus8 = if i >= 2 { 8 } else { 0 };
                let first_lane = if i % 2 == 0 { 0 } else { 2 };
                for (e, &v) in lane.iter().enumerate() {
                    let row = 16 * (first_lane + e / 8) + plus8 + e % 8;
                    acc[row] = v;
                }
            }
        }
    }
}
