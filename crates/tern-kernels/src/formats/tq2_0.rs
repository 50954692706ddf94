//! llama.cpp TQ2_0 (GGUF type 35): ternary weights at 2 bits each plus an f16 scale per
//! 256-value block.
//!
//! Layout (ggml-org/llama.cpp `ggml/src/ggml-common.h::block_tq2_0`,
//! `ggml/src/ggml-quants.c::quantize_row_tq2_0_ref` / `dequantize_row_tq2_0`, and gguf-py
//! `gguf/quants.py::TQ2_0`):
//!
//! - a block is 256 consecutive values of one row: `qs[64]` then `d` (f16, little endian),
//!   66 bytes;
//! - codes are `c = q + 1` in {0, 1, 2}; `qs` is two 32-byte chunks of 128 values each, and
//!   in chunk `h`, byte m holds value `128*h + 32*l + m` in bits `2l..2l+2` (l = 0..4);
//! - value = `(c - 1) * d`. Rows must be a multiple of 256 long; blocks never span rows.
//!
//! ggml's quantizer sets `d = max|x|` per block and `c = lroundf(x / d) + 1`. For BitNet
//! weights that are already ternary times gamma this gives `d = gamma` in every block that
//! has a nonzero weight and `d = 0` in all-zero blocks.
//!
//! Decisions:
//! - [`pack`] writes `d = f16(gamma)` in **every** block, all-zero blocks included, so gamma
//!   survives even an all-zero tensor. Otherwise its bytes equal
//!   [`quantize_tq2_0_f32`] of the dequantized matrix (tested).
//! - [`unpack`] needs one scale for the whole tensor: it takes the common `d` of the blocks
//!   that hold a nonzero weight (all-zero blocks are skipped, whatever their `d`) and
//!   **errors** if those differ, because averaging would silently change weights. Use
//!   [`dequantize_tq2_0_f32`] for tensors with real per-block scales. Gamma comes back
//!   rounded to f16.
//! - code 3 is rejected by [`unpack`]; [`dequantize_tq2_0_f32`] mirrors ggml and yields `2*d`.

use half::f16;

use super::TernaryMatrix;
use crate::error::KernelError;

const FORMAT: &str = "tq2_0";

/// Values per block.
pub const BLOCK: usize = 256;
/// Bytes per block: 64 code bytes and the f16 scale.
pub const BLOCK_BYTES: usize = 66;

/// Byte size of a `rows x cols` tensor (`cols` a multiple of [`BLOCK`]).
pub fn byte_len(rows: usize, cols: usize) -> usize {
    rows * (cols / BLOCK) * BLOCK_BYTES
}

/// Byte (within `qs`) and bit shift of value `e` (0..256) of a block.
fn slot(e: usize) -> (usize, u32) {
    (e / 128 * 32 + e % 32, 2 * (e % 128 / 32) as u32)
}

/// Writes one block from 256 codes and its scale.
fn encode_block(codes: impl Iterator<Item = u8>, d: f16, out: &mut [u8]) {
    out.fill(0);
    for (e, c) in codes.enumerate() {
        let (byte, shift) = slot(e);
        out[byte] |= c << shift;
    }
    out[64..66].copy_from_slice(&d.to_le_bytes());
}

/// The code (0..=3) of value `e` of a block.
fn code_at(block: &[u8], e: usize) -> u8 {
    let (byte, shift) = slot(e);
    (block[byte] >> shift) & 3
}

fn scale_of(block: &[u8]) -> f16 {
    f16::from_le_bytes([block[64], block[65]])
}

/// Packs `m` with `d = f16(m.gamma)` in every block.
pub fn pack(m: &TernaryMatrix) -> Result<Vec<u8>, KernelError> {
    check_matrix(m, FORMAT)?;
    check_cols(m.rows, m.cols, FORMAT)?;
    let d = gamma_to_f16(m.gamma, FORMAT)?;
    let mut out = vec![0u8; byte_len(m.rows, m.cols)];
    for (values, block) in m
        .values
        .chunks_exact(BLOCK)
        .zip(out.chunks_exact_mut(BLOCK_BYTES))
    {
        encode_block(values.iter().map(|&q| (q + 1) as u8), d, block);
    }
    Ok(out)
}

/// Unpacks a `rows x cols` TQ2_0 tensor whose nonzero blocks share one scale.
pub fn unpack(bytes: &[u8], rows: usize, cols: usize) -> Result<TernaryMatrix, KernelError> {
    check_cols(rows, cols, FORMAT)?;
    check_len(bytes, rows, cols, BLOCK_BYTES, FORMAT)?;
    let mut values = vec![0i8; rows * cols];
    let mut scales = Vec::with_capacity(bytes.len() / BLOCK_BYTES);
    for (b, (block, out)) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(values.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        for (e, v) in out.iter_mut().enumerate() {
            let c = code_at(block, e);
            if c == 3 {
                let flat = b * BLOCK + e;
                return Err(KernelError::Invalid {
                    format: FORMAT,
                    what: format!(
                        "code 3 at row {}, column {} (block {b}, value {e}); codes are 0, 1, 2",
                        flat / cols,
                        flat % cols
                    ),
                });
            }
            *v = c as i8 - 1;
        }
        scales.push((scale_of(block), out.iter().any(|&v| v != 0)));
    }
    let gamma = tensor_gamma(&scales, cols / BLOCK, FORMAT)?;
    Ok(TernaryMatrix {
        rows,
        cols,
        values,
        gamma,
    })
}

/// Quantizes f32 values to TQ2_0 exactly as ggml's `quantize_row_tq2_0_ref` (and gguf-py):
/// per block `d = max|x|`, `c = lroundf(x * (1/d)) + 1` (ties away from zero), `d` stored as
/// f16. `x` is one or more whole rows; its length must be a multiple of 256.
pub fn quantize_tq2_0_f32(x: &[f32]) -> Result<Vec<u8>, KernelError> {
    check_f32_len(x.len(), FORMAT)?;
    let mut out = vec![0u8; x.len() / BLOCK * BLOCK_BYTES];
    for (xb, block) in x.chunks_exact(BLOCK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let (d, id) = ggml_block_scale(xb);
        encode_block(
            xb.iter().map(|&v| ggml_code(v, id)),
            f16::from_f32(d),
            block,
        );
    }
    Ok(out)
}

/// Dequantizes TQ2_0 bytes to f32 as ggml's `dequantize_row_tq2_0`: `(c - 1) * d`. Like
/// ggml, code 3 yields `2 * d` rather than an error.
pub fn dequantize_tq2_0_f32(bytes: &[u8]) -> Result<Vec<f32>, KernelError> {
    check_block_bytes(bytes.len(), BLOCK_BYTES, FORMAT)?;
    let mut out = Vec::with_capacity(bytes.len() / BLOCK_BYTES * BLOCK);
    for block in bytes.chunks_exact(BLOCK_BYTES) {
        let d = scale_of(block).to_f32();
        out.extend((0..BLOCK).map(|e| (code_at(block, e) as i32 - 1) as f32 * d));
    }
    Ok(out)
}

// ---- helpers shared with `tq1_0` (same block size, scale rules and quantizer) ----

/// ggml's block scale: `d = max|x|` with C's `MAX(a, b) = a > b ? a : b` (so a NaN only
/// sticks if nothing follows it), and `id = d ? 1/d : 0`.
pub(super) fn ggml_block_scale(xb: &[f32]) -> (f32, f32) {
    let d = xb.iter().fold(
        0.0f32,
        |amax, v| if amax > v.abs() { amax } else { v.abs() },
    );
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// ggml's code `lroundf(x * id) + 1`. `f32::round` rounds ties away from zero like `lroundf`.
/// For finite inputs `|x * id| <= 1` up to one ulp, so the clamp never fires; it only keeps
/// codes valid where ggml's `lroundf` is undefined (inf, NaN -> weight 0).
pub(super) fn ggml_code(x: f32, id: f32) -> u8 {
    let r = (x * id).round();
    if r >= 1.0 {
        2
    } else if r <= -1.0 {
        0
    } else {
        1
    }
}

/// One tensor scale from `(d, block has a nonzero weight)` per block. Blocks without a
/// nonzero weight are skipped (ggml writes `d = 0` there); the others must agree bit for bit.
/// With no nonzero block at all, the first block's `d` is used (0 for an empty tensor).
pub(super) fn tensor_gamma(
    scales: &[(f16, bool)],
    blocks_per_row: usize,
    format: &'static str,
) -> Result<f32, KernelError> {
    let mut nonzero = scales.iter().enumerate().filter(|(_, &(_, nz))| nz);
    let Some((first, &(d0, _))) = nonzero.next() else {
        return Ok(scales.first().map_or(0.0, |&(d, _)| d.to_f32()));
    };
    if let Some((b, &(d, _))) = nonzero.find(|(_, &(d, _))| d.to_bits() != d0.to_bits()) {
        let row = |b: usize| b / blocks_per_row.max(1);
        return Err(KernelError::Invalid {
            format,
            what: format!(
                "block {first} (row {}) has d = {d0} but block {b} (row {}) has d = {d}; a \
                 TernaryMatrix has one scale per tensor (dequantize to f32 for per-block scales)",
                row(first),
                row(b)
            ),
        });
    }
    Ok(d0.to_f32())
}

/// f16 scale for `gamma`, refusing values that f16 cannot hold (finite but over 65504).
pub(super) fn gamma_to_f16(gamma: f32, format: &'static str) -> Result<f16, KernelError> {
    let d = f16::from_f32(gamma);
    if gamma.is_finite() && !d.is_finite() {
        return Err(KernelError::Invalid {
            format,
            what: format!("gamma {gamma} overflows the f16 block scale"),
        });
    }
    Ok(d)
}

pub(super) fn check_cols(
    rows: usize,
    cols: usize,
    format: &'static str,
) -> Result<(), KernelError> {
    if !cols.is_multiple_of(BLOCK) {
        return Err(KernelError::Shape {
            format,
            what: format!(
                "{rows}x{cols}: row length {cols} is not a multiple of the {BLOCK}-value block"
            ),
        });
    }
    Ok(())
}

/// Checks the byte count of a `rows x cols` tensor of `block_bytes`-byte blocks, without
/// overflowing on absurd shapes.
pub(super) fn check_len(
    bytes: &[u8],
    rows: usize,
    cols: usize,
    block_bytes: usize,
    format: &'static str,
) -> Result<(), KernelError> {
    let Some(expected) = rows
        .checked_mul(cols / BLOCK)
        .and_then(|blocks| blocks.checked_mul(block_bytes))
    else {
        return Err(KernelError::Shape {
            format,
            what: format!("{rows}x{cols} overflows usize"),
        });
    };
    if bytes.len() != expected {
        return Err(KernelError::ByteLength {
            format,
            rows,
            cols,
            expected,
            got: bytes.len(),
        });
    }
    Ok(())
}

pub(super) fn check_f32_len(len: usize, format: &'static str) -> Result<(), KernelError> {
    if !len.is_multiple_of(BLOCK) {
        return Err(KernelError::Shape {
            format,
            what: format!("{len} values is not a multiple of the {BLOCK}-value block"),
        });
    }
    Ok(())
}

pub(super) fn check_block_bytes(
    len: usize,
    block_bytes: usize,
    format: &'static str,
) -> Result<(), KernelError> {
    if !len.is_multiple_of(block_bytes) {
        return Err(KernelError::Shape {
            format,
            what: format!("{len} bytes is not a whole number of {block_bytes}-byte blocks"),
        });
    }
    Ok(())
}

/// `TernaryMatrix` has public fields, so a hand-built one may be inconsistent.
pub(super) fn check_matrix(m: &TernaryMatrix, format: &'static str) -> Result<(), KernelError> {
    if m.rows.checked_mul(m.cols) != Some(m.values.len()) {
        return Err(KernelError::Shape {
            format,
            what: format!(
                "{} values for a {}x{} matrix",
                m.values.len(),
                m.rows,
                m.cols
            ),
        });
    }
    match m.values.iter().position(|v| !(-1..=1).contains(v)) {
        Some(index) => Err(KernelError::NotTernary {
            format,
            index,
            value: m.values[index] as i32,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Three blocks: a spread of values (amax 3.125), exact ties at +-0.5 after scaling by
    /// 1/2, and all zeros. Every value is exact in f32 and in numpy.
    fn fixture_input() -> Vec<f32> {
        let a = (0..256).map(|i| ((i * 37) % 101 - 50) as f32 / 16.0);
        let b = (0..256).map(|i| {
            if i == 255 {
                -2.0
            } else {
                ((i % 9) - 4) as f32 * 0.25
            }
        });
        a.chain(b).chain(std::iter::repeat_n(0.0, 256)).collect()
    }

    #[test]
    fn round_trip_random_shapes() {
        let mut rng = Rng::new(3);
        for &(rows, cols) in &[(1, 256), (3, 512), (4, 768), (7, 256), (2, 2560)] {
            for gamma in [0.5f32, 1.25, 0.0146484375] {
                let m = TernaryMatrix::random(rows, cols, gamma, &mut rng);
                let bytes = pack(&m).unwrap();
                assert_eq!(bytes.len(), rows * cols / 256 * 66);
                assert_eq!(
                    unpack(&bytes, rows, cols).unwrap(),
                    m,
                    "{rows}x{cols} gamma {gamma}"
                );
            }
        }
    }

    #[test]
    fn gamma_comes_back_rounded_to_f16() {
        let m = TernaryMatrix::new(1, 256, vec![1; 256], 0.1).unwrap();
        let back = unpack(&pack(&m).unwrap(), 1, 256).unwrap();
        assert_eq!(back.gamma, f16::from_f32(0.1).to_f32());
        assert_eq!(back.values, m.values);
    }

    /// Chunk h, byte m, bits 2l..2l+2 hold value 128h + 32l + m.
    #[test]
    fn hand_computed_block() {
        // All +1: code 2 in every field -> 0b10_10_10_10; d = f16(1.0) = 0x3C00.
        let all = TernaryMatrix::new(1, 256, vec![1; 256], 1.0).unwrap();
        let bytes = pack(&all).unwrap();
        assert!(bytes[..64].iter().all(|&b| b == 0xAA));
        assert_eq!(&bytes[64..], &[0x00, 0x3C]);

        // Zeros (code 1 -> 0x55) except value 0 = -1 (byte 0, bits 1:0) and value 200 = +1:
        // 200 = 128*1 + 32*2 + 8 -> byte 32 + 8 = 40, bits 5:4.
        let mut v = vec![0i8; 256];
        v[0] = -1;
        v[200] = 1;
        let bytes = pack(&TernaryMatrix::new(1, 256, v, 2.0).unwrap()).unwrap();
        let mut expected = vec![0x55u8; 64];
        expected[0] = 0b01_01_01_00;
        expected[40] = 0b01_10_01_01;
        expected.extend_from_slice(&[0x00, 0x40]); // f16(2.0) = 0x4000
        assert_eq!(bytes, expected);
    }

    /// Bytes produced by gguf-py 0.19 (`gguf.quants.quantize(x, TQ2_0)`) for `fixture_input`.
    #[test]
    fn quantize_matches_gguf_py() {
        let expected = hex(
            "146185586116584516618518618658611658851661851861865861165985166116598516618558619658451651851861865861165885166185186186586116584042\
             545595195155556546545595195155556546545595195155556546545595195195195155556546545595195155556546545595195155556546545595195155150040\
             555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555550000",
        );
        assert_eq!(quantize_tq2_0_f32(&fixture_input()).unwrap(), expected);
    }

    #[test]
    fn quantize_rounds_ties_away_and_zero_block() {
        // amax = 2 -> id = 0.5: 1.0 -> 0.5 -> +1, -1.0 -> -0.5 -> -1, 0.5 -> 0.25 -> 0.
        let mut x = vec![0.0f32; 256];
        x[..4].copy_from_slice(&[2.0, 1.0, -1.0, 0.5]);
        let bytes = quantize_tq2_0_f32(&x).unwrap();
        // Values 0..4 sit in bytes 0..4, bits 1:0: codes 2, 2, 0, 1.
        assert_eq!(&bytes[..5], &[0x56, 0x56, 0x54, 0x55, 0x55]);
        assert_eq!(&bytes[64..66], &[0x00, 0x40]);
        assert_eq!(
            dequantize_tq2_0_f32(&bytes).unwrap()[..4],
            [2.0, 2.0, -2.0, 0.0]
        );
        // An all-zero block gets d = 0, as in ggml.
        let zero = quantize_tq2_0_f32(&[0.0; 256]).unwrap();
        assert!(zero[..64].iter().all(|&b| b == 0x55) && zero[64..] == [0, 0]);
    }

    /// For ternary-times-gamma weights, `pack` and ggml's quantizer agree byte for byte
    /// (no block here is all zero, where ggml would write d = 0).
    #[test]
    fn pack_equals_ggml_quantize_of_dequantized() {
        let mut rng = Rng::new(5);
        let m = TernaryMatrix::random(4, 512, 0.037, &mut rng);
        assert_eq!(
            pack(&m).unwrap(),
            quantize_tq2_0_f32(&m.dequantize()).unwrap()
        );
    }

    #[test]
    fn dequantize_matches_matrix() {
        let mut rng = Rng::new(9);
        let m = TernaryMatrix::random(2, 512, 0.75, &mut rng);
        assert_eq!(
            dequantize_tq2_0_f32(&pack(&m).unwrap()).unwrap(),
            m.dequantize()
        );
    }

    #[test]
    fn unpack_skips_scales_of_all_zero_blocks() {
        // What ggml writes for a BitNet tensor with one all-zero block: d = 0 there.
        let mut x = vec![0.0f32; 512];
        x[3] = 0.25;
        x[7] = -0.25;
        let m = unpack(&quantize_tq2_0_f32(&x).unwrap(), 1, 512).unwrap();
        assert_eq!(m.gamma, 0.25);
        assert_eq!((m.values[3], m.values[7], m.values[300]), (1, -1, 0));
        // All blocks zero: the first block's d.
        let z = pack(&TernaryMatrix::new(2, 256, vec![0; 512], 0.5).unwrap()).unwrap();
        assert_eq!(unpack(&z, 2, 256).unwrap().gamma, 0.5);
    }

    #[test]
    fn mixed_block_scales_are_rejected() {
        let mut x = vec![0.5f32; 512];
        x[256..].fill(0.75);
        let err = unpack(&quantize_tq2_0_f32(&x).unwrap(), 2, 256).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("tq2_0:") && msg.contains("block 1 (row 1) has d = 0.75"),
            "{msg}"
        );
        // The f32 path keeps per-block scales.
        assert_eq!(
            dequantize_tq2_0_f32(&quantize_tq2_0_f32(&x).unwrap()).unwrap(),
            x
        );
    }

    #[test]
    fn code_3_is_rejected_by_unpack_but_dequantized_like_ggml() {
        let mut bytes = pack(&TernaryMatrix::new(1, 256, vec![0; 256], 1.0).unwrap()).unwrap();
        bytes[33] |= 0b1100_0000; // chunk 1, byte 1, bits 7:6 -> value 128 + 96 + 1 = 225
        let msg = unpack(&bytes, 1, 256).unwrap_err().to_string();
        assert!(
            msg.contains("tq2_0") && msg.contains("code 3 at row 0, column 225"),
            "{msg}"
        );
        assert_eq!(dequantize_tq2_0_f32(&bytes).unwrap()[225], 2.0);
    }

    #[test]
    fn shape_and_length_errors() {
        let huge = unpack(&[], usize::MAX, 512);
        assert!(matches!(huge, Err(KernelError::Shape { .. })));
        assert!(matches!(
            unpack(&[0u8; 66], 1, 200),
            Err(KernelError::Shape { .. })
        ));
        assert_eq!(
            unpack(&[0u8; 131], 2, 256).unwrap_err(),
            KernelError::ByteLength {
                format: "tq2_0",
                rows: 2,
                cols: 256,
                expected: 132,
                got: 131
            }
        );
        let m = TernaryMatrix::new(2, 128, vec![0; 256], 1.0).unwrap();
        assert!(matches!(pack(&m), Err(KernelError::Shape { .. })));
        assert!(matches!(
            quantize_tq2_0_f32(&[0.0; 255]),
            Err(KernelError::Shape { .. })
        ));
        assert!(matches!(
            dequantize_tq2_0_f32(&[0u8; 65]),
            Err(KernelError::Shape { .. })
        ));
        let huge = TernaryMatrix::new(1, 256, vec![1; 256], 1e6).unwrap();
        assert!(matches!(pack(&huge), Err(KernelError::Invalid { .. })));
    }
}
