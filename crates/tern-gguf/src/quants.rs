//! Dense ggml block formats to and from f32, following ggml's `dequantize_row_*` (ggml-quants.c)
//! and gguf-py `quants.py` exactly. Used for embeddings and output heads, which BitNet keeps in
//! higher precision; ternary types go through `tern_kernels::formats` instead.
//!
//! All functions take whole blocks; callers check sizes first (the reader does, via
//! [`GgmlType::byte_size`]), and a length that is not whole blocks is an error here too.

use half::f16;

use crate::types::GgmlType;

const QK_K: usize = 256;

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

/// Dequantizes `bytes` of dense type `ty` holding `n` values. Ternary types are decoded with
/// ggml's per-block semantics (each block's own `d`; I2_S with its tensor scale).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let need = ty.byte_size(&[n])?;
    if bytes.len() != need {
        return Err(format!(
            "{}: {n} values need {need} bytes, got {}",
            ty.name(),
            bytes.len()
        ));
    }
    let (bs, bb) = ty.block();
    let blocks = || bytes.chunks_exact(bb);
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(blocks().map(|c| f16_at(c, 0))),
        GgmlType::BF16 => {
            out.extend(blocks().map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))))
        }
        GgmlType::Q8_0 => {
            // block_q8_0 { f16 d; int8 qs[32]; }
            for b in blocks() {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            // block_q4_0 { f16 d; u8 qs[16]; }: low nibbles are values 0..16, high 16..32.
            for b in blocks() {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0xf) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_K => {
            // block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }: 8 sub-blocks of 32
            // with 6-bit scale and min each; sub-blocks 2j and 2j+1 share qs[32j..32j+32] as
            // low and high nibbles.
            for b in blocks() {
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
        }
        GgmlType::Q6_K => {
            // block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }
            for b in blocks() {
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
        }
        GgmlType::TQ1_0 => {
            return tern_kernels::formats::tq1_0::dequantize_tq1_0_f32(bytes)
                .map_err(|e| e.to_string())
        }
        GgmlType::TQ2_0 => {
            return tern_kernels::formats::tq2_0::dequantize_tq2_0_f32(bytes)
                .map_err(|e| e.to_string())
        }
        GgmlType::I2_S => {
            if !n.is_multiple_of(tern_kernels::formats::i2s::BLOCK) {
                return Err(format!("I2_S: {n} values is not a multiple of 128"));
            }
            return tern_kernels::formats::i2s::unpack(bytes, 1, n)
                .map(|m| m.dequantize())
                .map_err(|e| e.to_string());
        }
    }
    debug_assert_eq!(out.len(), n, "{} block {bs}", ty.name());
    Ok(out)
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
}
