//! A Q6_K writer (`--head q6_k`): ggml's `block_q6_K` layout (`ql[128]`, `qh[64]`,
//! `scales: i8[16]`, `d: f16`; x = d * scale[p / 16] * (q - 32) with q in 0..64), with a simple
//! quantizer of our own: per 16 values a signed scale, the one with the smallest squared error
//! among -m/32, -m/31.5, ..., -m/26 (m = the largest-magnitude value), the 16 scales quantized to i8 against one f16 `d`, then every value rounded
//! against its effective scale. It is not ggml's (which searches scales to minimize the
//! weighted error), so bytes differ from llama-quantize's; the layout is the same and is
//! checked against tern's reader and gguf-py's dequantization.

/// Values per block.
pub const QK_K: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 210;

/// Quantizes `x` (a multiple of 256 values) to Q6_K blocks.
pub fn quantize_q6_k(x: &[f32]) -> Result<Vec<u8>, String> {
    if !x.len().is_multiple_of(QK_K) {
        return Err(format!("Q6_K: {} values is not a multiple of 256", x.len()));
    }
    let mut out = vec![0u8; x.len() / QK_K * BLOCK_BYTES];
    for (b, o) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        encode_block(b, o);
    }
    Ok(out)
}

fn encode_block(x: &[f32], o: &mut [u8]) {
    // Signed sub-block scales: the extreme value maps to q - 32 = -32.
    let mut s = [0f32; 16];
    for (j, sub) in x.chunks_exact(16).enumerate() {
        let m = sub
            .iter()
            .copied()
            .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        // A few scales near the plain one; keep the one with the smallest squared error.
        let err = |sc: f32| -> f32 {
            sub.iter()
                .map(|&v| {
                    let q = (v / sc).round().clamp(-32.0, 31.0);
                    (v - q * sc).powi(2)
                })
                .sum()
        };
        s[j] = -m / 32.0;
        if m != 0.0 {
            let mut best = err(s[j]);
            for k in 1..=12 {
                let cand = -m / (32.0 - 0.5 * k as f32);
                let e = err(cand);
                if e < best {
                    best = e;
                    s[j] = cand;
                }
            }
        }
    }
    let smax = s.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = half::f16::from_f32(smax / 127.0);
    let df = d.to_f32();
    let mut sc = [0i8; 16];
    if df > 0.0 {
        for j in 0..16 {
            sc[j] = (s[j] / df).round().clamp(-128.0, 127.0) as i8;
        }
    }
    let (ql, rest) = o.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (scales, dd) = rest.split_at_mut(16);
    for (p, &v) in x.iter().enumerate() {
        let eff = df * sc[p / 16] as f32;
        let q = if eff != 0.0 {
            (v / eff).round().clamp(-32.0, 31.0) as i32
        } else {
            0
        };
        let q = (q + 32) as u8;
        let (half, r) = (p / 128, p % 128);
        let (k, l) = (r / 32, r % 32);
        let li = 64 * half + l + if k % 2 == 1 { 32 } else { 0 };
        ql[li] |= if k < 2 { q & 0xf } else { (q & 0xf) << 4 };
        qh[32 * half + l] |= (q >> 4) << (2 * k);
    }
    for j in 0..16 {
        scales[j] = sc[j] as u8;
    }
    dd.copy_from_slice(&d.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_gguf::{quants, GgmlType};

    #[test]
    fn round_trips_through_the_reader() {
        let mut state = 0x9e37_79b9u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as f32 / u32::MAX as f32 * 2.0 - 1.0
        };
        // Ordinary values, a block of zeros, one with a single spike, a constant block.
        let mut x: Vec<f32> = (0..512).map(|_| next()).collect();
        x.extend(std::iter::repeat_n(0.0, 256));
        let mut spike = vec![0.001f32; 256];
        spike[77] = -50.0;
        x.extend(spike);
        x.extend(std::iter::repeat_n(0.3, 256));
        let bytes = quantize_q6_k(&x).unwrap();
        let y = quants::dequantize(GgmlType::Q6_K, &bytes, x.len()).unwrap();
        let err: f64 = x[..512]
            .iter()
            .zip(&y)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = x[..512]
            .iter()
            .map(|a| (*a as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(err / norm < 0.02, "rel L2 {}", err / norm);
        assert!(y[512..768].iter().all(|&v| v == 0.0));
        assert!((y[768 + 77] + 50.0).abs() < 50.0 / 200.0, "{}", y[768 + 77]);
        assert!((y[1024] - 0.3).abs() < 0.3 / 64.0, "{}", y[1024]);
        assert!(quantize_q6_k(&x[..100]).is_err());
    }
}
