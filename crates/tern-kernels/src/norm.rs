//! RMSNorm, and the dot product with 16 fixed partial sums it (and attention) is built on.
//!
//! The SIMD versions are the generic code compiled with wider vectors: every step is either
//! element-wise or a sum into one of 16 fixed lanes, so all widths give the same bits as the
//! plain references, which the tests check on every instruction set.

use crate::cpu::{check_isa, Isa};

/// Dot product with 16 fixed partial sums (element `i` goes to sum `i mod 16`), added up in a
/// fixed order at the end: vectorisable, and the same bits whatever the vector width.
/// (A pairwise tree for the final sum measured 20% slower prefill at 700m, pp512.)
pub fn dot16(a: &[f32], b: &[f32]) -> f32 {
    dot16_with(a, b, Isa::detect())
}

/// As [`dot16`] with a chosen instruction set (all give the same bits). Panics if this CPU
/// does not support `isa`.
pub fn dot16_with(a: &[f32], b: &[f32], isa: Isa) -> f32 {
    check_isa(isa, "dot16_with");
    assert_eq!(a.len(), b.len(), "dot16: lengths differ");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_isa` found AVX-512 F on this CPU.
        Isa::Avx512 => unsafe { dot16_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_isa` found AVX2 on this CPU.
        Isa::Avx2 => unsafe { dot16_avx2(a, b) },
        _ => dot16_generic(a, b),
    }
}

/// The reference for [`dot16`]: the same sums, written one element at a time.
pub fn dot16_reference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot16: lengths differ");
    let mut acc = [0f32; 16];
    for i in 0..a.len() {
        acc[i % 16] += a[i] * b[i];
    }
    let mut s = 0.0;
    for v in acc {
        s += v;
    }
    s
}

/// [`dot16`] for inlining into other kernels (compiled for whatever features the caller has).
#[inline(always)]
pub(crate) fn dot16_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[i] += x * y;
    }
    let mut s = 0.0;
    for v in acc {
        s += v;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot16_avx512(a: &[f32], b: &[f32]) -> f32 {
    dot16_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot16_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot16_generic(a, b)
}

/// RMSNorm in f32 over rows of `w.len()`: `out = x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_with(x, w, eps, out, Isa::detect())
}

/// As [`rms_norm`] with a chosen instruction set (all give the same bits). Panics if this CPU
/// does not support `isa`.
pub fn rms_norm_with(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], isa: Isa) {
    check_isa(isa, "rms_norm_with");
    check_norm_shapes(x, w, out);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_isa` found AVX-512 F on this CPU.
        Isa::Avx512 => unsafe { rms_norm_avx512(x, w, eps, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_isa` found AVX2 on this CPU.
        Isa::Avx2 => unsafe { rms_norm_avx2(x, w, eps, out) },
        _ => rms_norm_generic(x, w, eps, out),
    }
}

/// The reference for [`rms_norm`], one element at a time.
pub fn rms_norm_reference(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    check_norm_shapes(x, w, out);
    let d = w.len();
    for r in 0..x.len() / d {
        let row = &x[r * d..(r + 1) * d];
        let inv = 1.0 / (dot16_reference(row, row) / d as f32 + eps).sqrt();
        for i in 0..d {
            out[r * d + i] = w[i] * (row[i] * inv);
        }
    }
}

fn check_norm_shapes(x: &[f32], w: &[f32], out: &[f32]) {
    assert!(
        !w.is_empty() && x.len().is_multiple_of(w.len()) && out.len() == x.len(),
        "rms_norm: {} inputs, {} outputs, rows of {}",
        x.len(),
        out.len(),
        w.len()
    );
}

#[inline(always)]
fn rms_norm_generic(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        // 16 partial sums: a serial f32 sum here cost ~2 us per norm at 1536-4096 wide, a
        // tenth of a decode layer's non-matrix time.
        let ms = dot16_generic(xr, xr) / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * inv);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn rms_norm_avx512(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_generic(x, w, eps, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn rms_norm_avx2(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_generic(x, w, eps, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    /// Values over many binades, with signs, so that summation order would show in the bits.
    pub(crate) fn wild(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| rng.unit_f32() * 2f32.powi(rng.below(17) as i32 - 8))
            .collect()
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    proptest! {
        #[test]
        fn dot16_is_bit_exact_on_every_isa(len in 0usize..300, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let (a, b) = (wild(&mut rng, len), wild(&mut rng, len));
            let want = dot16_reference(&a, &b);
            for isa in Isa::available() {
                let got = dot16_with(&a, &b, isa);
                prop_assert_eq!(got.to_bits(), want.to_bits(), "{:?}: {} vs {}", isa, got, want);
            }
        }

        #[test]
        fn rms_norm_is_bit_exact_on_every_isa(
            d in 1usize..200,
            rows in 1usize..5,
            eps in prop::sample::select(vec![1e-5f32, 1e-6, 0.0]),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let (x, w) = (wild(&mut rng, rows * d), wild(&mut rng, d));
            let mut want = vec![0.0; rows * d];
            rms_norm_reference(&x, &w, eps, &mut want);
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; rows * d];
                rms_norm_with(&x, &w, eps, &mut got, isa);
                prop_assert!(same_bits(&got, &want), "{:?} d {} rows {}", isa, d, rows);
            }
        }
    }

    #[test]
    fn rms_norm_normalises() {
        let x = [3.0f32, -4.0];
        let mut out = [0.0; 2];
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut out);
        // mean(x^2) = 12.5
        let inv = 1.0 / 12.5f32.sqrt();
        assert_eq!(out, [3.0 * inv, 2.0 * (-4.0 * inv)]);
    }

    #[test]
    #[should_panic(expected = "rms_norm: 5 inputs")]
    fn rms_norm_rejects_ragged_rows() {
        rms_norm(&[0.0; 5], &[1.0; 2], 1e-5, &mut [0.0; 5]);
    }
}
