//! BitNet b1.58 activation quantization: int8 absmax, one scale per token (row).
//!
//! `s = 127 / max(max|x|, 1e-5)`, `x_q = clamp(round_ties_even(x * s), -128, 127)`.
//! Alongside the scale we keep each row's sum of `x_q`: the ternary kernels multiply by the
//! unsigned code `c = q + 1` (what `vpdpbusd` wants) and subtract that sum afterwards.
//!
//! Rows are stored with a zero-padded stride ([`ACT_ALIGN`]) so kernels may read whole blocks
//! past `k` without checks; the padding contributes nothing to any dot product.

use crate::aligned::AlignedBytes;
use crate::cpu::Isa;
use crate::formats::SCALE_EPS;
use crate::pool::{Chunks, ThreadPool};

/// Row stride granularity: a multiple of every compute layout's k-block (16 for tern2,
/// 20 for tern3) and of a cache line.
pub const ACT_ALIGN: usize = 320;

/// Quantized activations for `n` tokens of width `k`. Buffers are reused across calls.
#[derive(Clone, Debug, Default)]
pub struct QuantizedActs {
    pub n: usize,
    pub k: usize,
    /// Bytes between rows of `data` (>= k, multiple of [`ACT_ALIGN`]).
    pub stride: usize,
    data: Option<AlignedBytes>,
    /// Per-token scale s (x ~= x_q / s).
    pub scales: Vec<f32>,
    /// Per-token sum of x_q.
    pub sums: Vec<i32>,
}

impl QuantizedActs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Row `t` including its zero padding (`stride` bytes).
    pub fn row_padded(&self, t: usize) -> &[i8] {
        let bytes = &self.bytes()[t * self.stride..(t + 1) * self.stride];
        bytemuck::cast_slice(bytes)
    }

    /// Row `t`, exactly `k` values.
    pub fn row(&self, t: usize) -> &[i8] {
        &self.row_padded(t)[..self.k]
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.as_ref().map_or(&[], |d| d.as_slice())
    }

    /// Makes room for `n x k`, keeping the allocation when it fits (callers zero the padding).
    fn reshape(&mut self, n: usize, k: usize) {
        let stride = k.div_ceil(ACT_ALIGN).max(1) * ACT_ALIGN;
        let len = n * stride;
        match &mut self.data {
            Some(d) => {
                d.resize(len);
            }
            None => self.data = Some(AlignedBytes::zeroed(len)),
        }
        self.n = n;
        self.k = k;
        self.stride = stride;
        self.scales.resize(n, 0.0);
        self.sums.resize(n, 0);
    }

    /// Sets quantized rows directly (tests and kernels benchmarks that need exact control,
    /// e.g. values at -128). Scales must be positive.
    pub fn from_parts(n: usize, k: usize, q: &[i8], scales: &[f32]) -> Self {
        assert_eq!(q.len(), n * k);
        assert_eq!(scales.len(), n);
        let mut a = QuantizedActs::new();
        a.reshape(n, k);
        let stride = a.stride;
        let d = a.data.as_mut().unwrap().as_mut_slice();
        for t in 0..n {
            let row = &mut d[t * stride..(t + 1) * stride];
            row.fill(0);
            for (dst, &v) in row.iter_mut().zip(&q[t * k..(t + 1) * k]) {
                *dst = v as u8;
            }
            a.sums[t] = q[t * k..(t + 1) * k].iter().map(|&v| v as i32).sum();
            a.scales[t] = scales[t];
        }
        a
    }
}

/// Quantizes `x` (`n` rows of `k` floats, row-major) into `out`, in parallel over rows.
pub fn quantize_acts(x: &[f32], n: usize, k: usize, out: &mut QuantizedActs, pool: &ThreadPool) {
    quantize_acts_with(x, n, k, out, pool, Isa::detect())
}

/// As [`quantize_acts`] with a chosen instruction set (all give identical bits).
pub fn quantize_acts_with(
    x: &[f32],
    n: usize,
    k: usize,
    out: &mut QuantizedActs,
    pool: &ThreadPool,
    isa: Isa,
) {
    assert_eq!(
        x.len(),
        n * k,
        "quantize_acts: x has {} values, expected {n}x{k}",
        x.len()
    );
    out.reshape(n, k);
    let stride = out.stride;
    // Small inputs (decode) are not worth waking a worker for.
    let tasks = if n * k < 1 << 15 {
        1
    } else {
        n.min(pool.threads() * 4)
    };
    // Tasks own disjoint row ranges: their rows of the data, their scales and sums.
    let data = out.data.as_mut().expect("reshaped").as_mut_slice();
    let parts = (
        Chunks::new(&mut data[..n * stride], stride),
        Chunks::new(&mut out.scales[..n], 1),
        Chunks::new(&mut out.sums[..n], 1),
    );
    pool.run_split(
        tasks,
        parts,
        &|_, ((rows, data), (_, scales), (_, sums))| {
            for (i, t) in rows.enumerate() {
                let row: &mut [i8] =
                    bytemuck::cast_slice_mut(&mut data[i * stride..(i + 1) * stride]);
                // The buffer may hold a wider earlier input: kernels read whole padded rows.
                row[k..].fill(0);
                (scales[i], sums[i]) = quantize_row(&x[t * k..(t + 1) * k], &mut row[..k], isa);
            }
        },
    );
}

fn quantize_row(x: &[f32], out: &mut [i8], isa: Isa) -> (f32, i32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` / `Isa::Avx2` are only constructed by detection or by callers
        // that checked `is_supported`; the functions only need those features.
        Isa::Avx512 => unsafe { quantize_row_avx512(x, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2.
        Isa::Avx2 => unsafe { quantize_row_avx2(x, out) },
        _ => quantize_row_portable(x, out),
    }
}

/// The reference: obviously the formula above. SIMD variants are this same code compiled with
/// wider vectors; every step is exact or a single IEEE operation, so the bits are identical.
#[inline(always)]
pub fn quantize_row_portable(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    // Sixteen running maxima: max is exact in any order, so this is the same value as a
    // serial fold, but vectorisable (a serial max chain over 1536-6912 values is microseconds).
    let mut lanes = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    for (i, &v) in chunks.remainder().iter().enumerate() {
        lanes[i] = lanes[i].max(v.abs());
    }
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    let amax = lanes.iter().fold(0.0f32, |m, &v| m.max(v));
    let s = 127.0 / amax.max(SCALE_EPS);
    let mut sum = 0i32;
    for (o, &v) in out.iter_mut().zip(x) {
        let q = (v * s).round_ties_even().clamp(-128.0, 127.0) as i8;
        *o = q;
        sum += q as i32;
    }
    (s, sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_row_avx512(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    quantize_row_portable(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    quantize_row_portable(x, out)
}
