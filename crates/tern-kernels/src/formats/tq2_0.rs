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
//! Only the 2-bit packing is here; blocks, scales and their rules (shared with TQ1_0) are in
//! `formats/tq.rs`: [`pack`] writes `d = f16(gamma)` in **every** block, so gamma survives even
//! an all-zero tensor, and otherwise equals [`quantize_tq2_0_f32`] of the dequantized matrix
//! (tested); [`unpack`] needs one scale over the blocks that hold a nonzero weight and
//! **errors** if those differ, because averaging would silently change weights (use
//! [`dequantize_tq2_0_f32`] for real per-block scales); gamma comes back rounded to f16.
//! Code 3 is rejected by [`unpack`]; [`dequantize_tq2_0_f32`] mirrors ggml and yields `2*d`.

use super::tq::{self, Packing};
use super::TernaryMatrix;
use crate::error::KernelError;

pub use super::tq::BLOCK;
/// Bytes per block: 64 code bytes and the f16 scale.
pub const BLOCK_BYTES: usize = 66;

/// TQ2_0's 2-bit packing of a block's codes.
struct TwoBit;

impl Packing for TwoBit {
    const FORMAT: &'static str = "tq2_0";
    const BLOCK_BYTES: usize = BLOCK_BYTES;

    fn encode(codes: impl Iterator<Item = u8>, qs: &mut [u8]) {
        qs.fill(0);
        for (e, c) in codes.enumerate() {
            let (byte, shift) = slot(e);
            qs[byte] |= c << shift;
        }
    }

    /// The code (0..=3) of value `e` of a block.
    fn code(qs: &[u8], e: usize) -> u8 {
        let (byte, shift) = slot(e);
        (qs[byte] >> shift) & 3
    }
}

/// Byte (within `qs`) and bit shift of value `e` (0..256) of a block.
fn slot(e: usize) -> (usize, u32) {
    (e / 128 * 32 + e % 32, 2 * (e % 128 / 32) as u32)
}

/// Packs `m` with `d = f16(m.gamma)` in every block.
pub fn pack(m: &TernaryMatrix) -> Result<Vec<u8>, KernelError> {
    tq::pack::<TwoBit>(m)
}

/// Unpacks a `rows x cols` TQ2_0 tensor whose nonzero blocks share one scale; code 3 is an
/// error.
pub fn unpack(bytes: &[u8], rows: usize, cols: usize) -> Result<TernaryMatrix, KernelError> {
    tq::unpack::<TwoBit>(bytes, rows, cols)
}

/// Quantizes f32 values to TQ2_0 exactly as ggml's `quantize_row_tq2_0_ref` (and gguf-py):
/// per block `d = max|x|`, `c = lroundf(x * (1/d)) + 1` (ties away from zero), `d` stored as
/// f16. `x` is one or more whole rows; its length must be a multiple of 256.
pub fn quantize_tq2_0_f32(x: &[f32]) -> Result<Vec<u8>, KernelError> {
    tq::quantize::<TwoBit>(x)
}

/// Dequantizes TQ2_0 bytes to f32 as ggml's `dequantize_row_tq2_0`: `(c - 1) * d`. Like
/// ggml, code 3 yields `2 * d` rather than an error.
pub fn dequantize_tq2_0_f32(bytes: &[u8]) -> Result<Vec<f32>, KernelError> {
    tq::dequantize::<TwoBit>(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::tq::testing;
    use super::*;
    use crate::rng::Rng;
    use half::f16;

    #[test]
    fn round_trip_random_shapes() {
        testing::round_trip_random_shapes::<TwoBit>(3);
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
        testing::quantize_matches_gguf_py::<TwoBit>(
            "146185586116584516618518618658611658851661851861865861165985166116598516618558619658451651851861865861165885166185186186586116584042\
             545595195155556546545595195155556546545595195155556546545595195195195155556546545595195155556546545595195155556546545595195155150040\
             555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555550000",
        );
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
        testing::shape_and_length_errors::<TwoBit>();
    }
}
