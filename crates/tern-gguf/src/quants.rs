//! Dense ggml block formats to and from f32, following ggml's `dequantize_row_*` (ggml-quants.c)
//! and gguf-py `quants.py` exactly, plus tern's own Q6_K quantizer. Used for embeddings and
//! output heads, which BitNet keeps in higher precision; the ternary block layouts live in
//! `tern_kernels::formats`. The codec table ([`crate::TypeTraits`]) points at both.
//!
//! [`dequantize`] and [`quantize`] are the checked entry points for any type; the per-type
//! functions take whole blocks (callers check sizes first, via [`GgmlType::byte_size`]).

use half::f16;
use tern_kernels::formats::i2s;

use crate::types::GgmlType;

/// Values per k-quant super-block.
const QK_K: usize = 256;
/// Bytes per Q6_K block.
const Q6_K_BYTES: usize = 210;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// ggml's `GGML_BF16_TO_FP32`: the bf16 bits are the high half of an f32.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// ggml's `ggml_compute_fp32_to_bf16` (and gguf-py's): round to nearest even, NaN made quiet.
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16
}

/// Dequantizes `bytes` of type `ty` holding `n` values, with the type's `to_float` from the
/// codec table after checking the byte count. Ternary types are decoded with ggml's per-block
/// semantics (each block's own `d`; I2_S with its tensor scale).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let need = ty.byte_size(&[n])?;
    if bytes.len() != need {
        return Err(format!(
            "{}: {n} values need {need} bytes, got {}",
            ty.name(),
            bytes.len()
        ));
    }
    let out = (ty.traits().to_float)(bytes, n)?;
    debug_assert_eq!(out.len(), n, "{}", ty.name());
    Ok(out)
}

/// Quantizes `x` to type `ty` with the type's `from_float` from the codec table; an error for
/// types tern has no quantizer for.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>, String> {
    match ty.traits().from_float {
        Some(from_float) => from_float(x),
        None => Err(format!("tern has no quantizer for {}", ty.name())),
    }
}

/// Little-endian F32 values.
pub(crate) fn dequantize_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub(crate) fn dequantize_f16(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2).map(|c| f16_at(c, 0)).collect()
}

pub(crate) fn dequantize_bf16(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}

/// `block_q8_0 { f16 d; int8 qs[32]; }`
pub(crate) fn dequantize_q8_0(b: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(b.len() / 34 * 32);
    for b in b.chunks_exact(34) {
        let d = f16_at(b, 0);
        out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
    }
    out
}

/// `block_q4_0 { f16 d; u8 qs[16]; }`: low nibbles are values 0..16, high 16..32.
pub(crate) fn dequantize_q4_0(b: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(b.len() / 18 * 32);
    for b in b.chunks_exact(18) {
        let d = f16_at(b, 0);
        let qs = &b[2..18];
        out.extend(qs.iter().map(|&q| ((q & 0xf) as i32 - 8) as f32 * d));
        out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
    }
    out
}

/// `block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }`: 8 sub-blocks of 32 with 6-bit
/// scale and min each; sub-blocks 2j and 2j+1 share qs[32j..32j+32] as low and high nibbles.
pub(crate) fn dequantize_q4_k(b: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(b.len() / 144 * QK_K);
    for b in b.chunks_exact(144) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qs = &b[16..144];
        for j in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * j, scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
            let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
            let q = &qs[32 * j..32 * j + 32];
            out.extend(q.iter().map(|&v| d1 * (v & 0xf) as f32 - m1));
            out.extend(q.iter().map(|&v| d2 * (v >> 4) as f32 - m2));
        }
    }
    out
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }`
pub(crate) fn dequantize_q6_k(b: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(b.len() / Q6_K_BYTES * QK_K);
    for b in b.chunks_exact(Q6_K_BYTES) {
        let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
        let d = f16_at(b, 208);
        let mut y = [0f32; QK_K];
        for half in 0..2 {
            let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
            let sc = &sc[8 * half..];
            let y = &mut y[128 * half..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
        out.extend_from_slice(&y);
    }
    out
}

/// bitnet.cpp's I2_S of `n` values (a multiple of 128) with its tensor scale.
pub(crate) fn dequantize_i2_s(bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    if !n.is_multiple_of(i2s::BLOCK) {
        return Err(format!("I2_S: {n} values is not a multiple of 128"));
    }
    i2s::unpack(bytes, 1, n)
        .map(|m| m.dequantize())
        .map_err(|e| e.to_string())
}

/// ggml's `get_scale_min_k4`: 6-bit scale and min of Q4_K sub-block `j` (0..8) from the
/// 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Quantizes f32 to Q8_0 as ggml's `quantize_row_q8_0_ref` and gguf-py: per 32 values
/// `d = max|x| / 127`, `q = roundf(x / d)` (ties away from zero, with the f32 `d`), `d` stored
/// as f16. For `--head q8_0` exports.
pub fn quantize_q8_0(x: &[f32]) -> Result<Vec<u8>, String> {
    if !x.len().is_multiple_of(32) {
        return Err(format!("Q8_0: {} values is not a multiple of 32", x.len()));
    }
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    Ok(out)
}

/// Quantizes `x` (a multiple of 256 values) to Q6_K (`--head q6_k`): ggml's `block_q6_K`
/// layout (`ql[128]`, `qh[64]`, `scales: i8[16]`, `d: f16`; x = d * scale[p / 16] * (q - 32)
/// with q in 0..64), with a simple quantizer of our own: per 16 values a signed scale, the one
/// with the smallest squared error among -m/32, -m/31.5, ..., -m/26 (m = the
/// largest-magnitude value), the 16 scales quantized to i8 against one f16 `d`, then every
/// value rounded against its effective scale. It is not ggml's (which searches scales to
/// minimize the weighted error), so bytes differ from llama-quantize's; the layout is the same
/// and is checked against [`dequantize`] and gguf-py's dequantization.
pub fn quantize_q6_k(x: &[f32]) -> Result<Vec<u8>, String> {
    if !x.len().is_multiple_of(QK_K) {
        return Err(format!("Q6_K: {} values is not a multiple of 256", x.len()));
    }
    let mut out = vec![0u8; x.len() / QK_K * Q6_K_BYTES];
    for (b, o) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q6_K_BYTES)) {
        encode_q6_k_block(b, o);
    }
    Ok(out)
}

fn encode_q6_k_block(x: &[f32], o: &mut [u8]) {
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

/// f32 values as F16 bytes (round to nearest even, like numpy's `astype(float16)`).
pub fn f32_to_f16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

/// f32 values as BF16 bytes with ggml's rounding.
pub fn f32_to_bf16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|&v| f32_to_bf16(v).to_le_bytes())
        .collect()
}

/// f32 values as little-endian F32 bytes.
pub fn f32_to_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_nibble_order() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = 0x9f; // value 0 = 15-8 = 7, value 16 = 9-8 = 1
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(y[0], 3.5);
        assert_eq!(y[16], 0.5);
        assert_eq!(y[1], -4.0);
    }

    #[test]
    fn q8_0_round_trip_is_close_and_matches_ggml_rounding() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) * 0.37).collect();
        let q = quantize_q8_0(&x).unwrap();
        assert_eq!(q.len(), 68);
        let y = dequantize(GgmlType::Q8_0, &q, 64).unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert!(
                (a - b).abs() <= 0.37 * 32.0 / 127.0 * 0.51 + 1e-3,
                "{a} {b}"
            );
        }
        // amax maps to +-127
        assert_eq!(q[2] as i8, -127);
    }

    #[test]
    fn q4_k_scale_unpacking() {
        // sub-block 5: scale = (q[9] & 0xf) | ((q[1] >> 6) << 4), min = (q[9] >> 4) | ((q[5] >> 6) << 4)
        let mut s = [0u8; 12];
        s[9] = 0x3a;
        s[1] = 0b1100_0000;
        s[5] = 0b0100_0000;
        assert_eq!(scale_min_k4(5, &s), (0x3a & 0xf | 0x30, 0x3 | 0x10));
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(bf16_to_f32(f32_to_bf16(3.140625)), 3.140625);
        // ties to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn q6_k_round_trips_through_the_reader() {
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
        let y = dequantize(GgmlType::Q6_K, &bytes, x.len()).unwrap();
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
