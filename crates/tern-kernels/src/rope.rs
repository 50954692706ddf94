//! Rotary position embedding, rotate-half form (HF / NeoX pairing): in each head of `d`
//! dimensions, dimension `i` pairs with `i + d/2` and the pair turns by angle `i` of the
//! position. Element-wise, so every vector width gives the reference's bits.

use crate::cpu::{check_isa, Isa};

/// Rotates every head of `x` (consecutive heads of `head_dim = 2 * cos.len()` floats) in
/// place by one position's angles (`cos[i]`, `sin[i]` for pair `i`).
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    rope_with(x, cos, sin, Isa::detect())
}

/// As [`rope`] with a chosen instruction set (all give the same bits). Panics if this CPU
/// does not support `isa`.
pub fn rope_with(x: &mut [f32], cos: &[f32], sin: &[f32], isa: Isa) {
    check_isa(isa, "rope_with");
    check_shapes(x, cos, sin);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_isa` found AVX-512 F on this CPU.
        Isa::Avx512 => unsafe { rope_avx512(x, cos, sin) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_isa` found AVX2 on this CPU.
        Isa::Avx2 => unsafe { rope_avx2(x, cos, sin) },
        _ => rope_generic(x, cos, sin),
    }
}

/// The reference for [`rope`], one pair at a time.
pub fn rope_reference(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    check_shapes(x, cos, sin);
    let half = cos.len();
    for head in 0..x.len() / (2 * half) {
        let at = head * 2 * half;
        for i in 0..half {
            let (x0, x1) = (x[at + i], x[at + half + i]);
            x[at + i] = x0 * cos[i] - x1 * sin[i];
            x[at + half + i] = x1 * cos[i] + x0 * sin[i];
        }
    }
}

fn check_shapes(x: &[f32], cos: &[f32], sin: &[f32]) {
    assert!(
        !cos.is_empty() && cos.len() == sin.len() && x.len().is_multiple_of(2 * cos.len()),
        "rope: {} values for heads of {} (cos) and {} (sin) pairs",
        x.len(),
        cos.len(),
        sin.len()
    );
}

#[inline(always)]
fn rope_generic(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in x.chunks_exact_mut(2 * half) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x0, x1) = (a[i], b[i]);
            a[i] = x0 * cos[i] - x1 * sin[i];
            b[i] = x1 * cos[i] + x0 * sin[i];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn rope_avx512(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    rope_generic(x, cos, sin)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn rope_avx2(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    rope_generic(x, cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn rope_is_bit_exact_on_every_isa(
            half in 1usize..80,
            heads in 1usize..5,
            pos in 0u32..5000,
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let x: Vec<f32> = (0..heads * 2 * half).map(|_| rng.unit_f32() * 8.0).collect();
            // The model's table: angle = pos * theta^(-2i/d).
            let (cos, sin): (Vec<f32>, Vec<f32>) = (0..half)
                .map(|i| {
                    let a = pos as f32 / 10000f32.powf((2 * i) as f32 / (2 * half) as f32);
                    (a.cos(), a.sin())
                })
                .unzip();
            let mut want = x.clone();
            rope_reference(&mut want, &cos, &sin);
            for isa in Isa::available() {
                let mut got = x.clone();
                rope_with(&mut got, &cos, &sin, isa);
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(same, "{:?} half {} heads {}", isa, half, heads);
            }
        }
    }

    #[test]
    fn rope_turns_pairs() {
        // A quarter turn maps (x0, x1) to (-x1, x0) in each head.
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut x, &[0.0], &[1.0]);
        assert_eq!(x, [-2.0, 1.0, -4.0, 3.0]);
    }
}
