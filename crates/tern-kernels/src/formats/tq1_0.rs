//! llama.cpp TQ1_0 (GGUF type 34): ternary weights at 1.6875 bits each, packed in base 3,
//! plus an f16 scale per 256-value block.
//!
//! Layout (ggml-org/llama.cpp `ggml/src/ggml-common.h::block_tq1_0`,
//! `ggml/src/ggml-quants.c::quantize_row_tq1_0_ref` / `dequantize_row_tq1_0`, and gguf-py
//! `gguf/quants.py::TQ1_0`):
//!
//! - a block is 256 consecutive values of one row: `qs[48]`, `qh[4]`, then `d` (f16, little
//!   endian), 54 bytes; codes are `c = q + 1` in {0, 1, 2};
//! - each byte stores up to five codes as the base-3 number `v = sum_n c_n * 3^(4-n)` (trit
//!   n = 0 is the most significant), written as `ceil(v * 256 / 243)` so that trit n reads
//!   back as `((byte * 3^n mod 256) * 3) >> 8`;
//! - `qs[0..32]` holds values 0..160: byte m, trit n is value `m + 32n` (n = 0..5);
//! - `qs[32..48]` holds values 160..240: byte `32 + m`, trit n is value `160 + m + 16n`;
//! - `qh[0..4]` holds values 240..256: byte m, trit n is value `240 + m + 4n` (n = 0..4);
//!   its fifth (least significant) trit is padding and is 0;
//! - value = `(c - 1) * d`. Rows must be a multiple of 256 long; blocks never span rows.
//!
//! Only the base-3 packing is here; blocks, scales and their rules are shared with TQ2_0 (see
//! `formats/tq.rs`): [`pack`] writes `d = f16(gamma)` in every block, [`unpack`] needs one
//! common `d` over the blocks that hold a nonzero weight and errors otherwise, and
//! [`quantize_tq1_0_f32`] / [`dequantize_tq1_0_f32`] mirror ggml with per-block `d = max|x|`.
//!
//! Every byte decodes to *some* trits, so there is no invalid code as in the 2-bit formats.
//! ggml's decoder accepts any byte; [`unpack`] is stricter and rejects a byte that is not the
//! encoding of the trits it decodes to (13 of the 256 values can never be written) or a `qh`
//! byte whose padding trit is not 0, since neither can come from ggml or gguf-py.
//! [`dequantize_tq1_0_f32`] accepts any byte, like ggml.

use super::tq::{self, Packing};
use super::TernaryMatrix;
use crate::error::KernelError;

pub use super::tq::BLOCK;
/// Bytes per block: 48 `qs`, 4 `qh`, 2 for the f16 scale.
pub const BLOCK_BYTES: usize = 54;
/// Bytes holding codes (`qs` then `qh`).
const CODE_BYTES: usize = 52;
const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// TQ1_0's base-3 packing of a block's codes.
struct Base3;

impl Packing for Base3 {
    const FORMAT: &'static str = "tq1_0";
    const BLOCK_BYTES: usize = BLOCK_BYTES;

    fn encode(codes: impl Iterator<Item = u8>, qs: &mut [u8]) {
        let mut v = [0u32; CODE_BYTES];
        for (e, c) in codes.enumerate() {
            let (byte, n) = slot(e);
            v[byte] += c as u32 * POW3[4 - n] as u32;
        }
        for (o, &v) in qs.iter_mut().zip(&v) {
            *o = encode_byte(v);
        }
    }

    fn code(qs: &[u8], e: usize) -> u8 {
        let (byte, n) = slot(e);
        trit(qs[byte], n)
    }

    /// Checks that each code byte re-encodes to itself from the trits it carries (for `qh`,
    /// the four data trits with padding 0).
    fn check(qs: &[u8], b: usize) -> Result<(), KernelError> {
        for (i, &byte) in qs.iter().enumerate() {
            // A qh byte carries four trits; its fifth (least significant) is padding 0.
            let (trits, shift) = if i < 48 { (5, 1) } else { (4, 3) };
            let v = (0..trits).fold(0u32, |v, n| v * 3 + trit(byte, n) as u32) * shift;
            if encode_byte(v) != byte {
                let part = if i < 48 {
                    format!("qs[{i}]")
                } else {
                    format!("qh[{}]", i - 48)
                };
                return Err(KernelError::Invalid {
                    format: Self::FORMAT,
                    what: format!(
                        "block {b}, {part} = {byte} is not a base-3 group ggml can write \
                         (non-canonical byte or nonzero qh padding trit)"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Byte (0..52, `qh` at 48..52) and trit (0 = most significant) of value `e` of a block.
fn slot(e: usize) -> (usize, usize) {
    match e {
        0..160 => (e % 32, e / 32),
        160..240 => (32 + (e - 160) % 16, (e - 160) / 16),
        _ => (48 + (e - 240) % 4, (e - 240) / 4),
    }
}

/// `ceil(v * 256 / 243)` for a base-3 number `v < 243`.
fn encode_byte(v: u32) -> u8 {
    ((v * 256).div_ceil(243)) as u8
}

/// Trit `n` of an encoded byte: bring it to the top by multiplying by 3^n (mod 256), then
/// read it as `(x * 3) >> 8`.
fn trit(byte: u8, n: usize) -> u8 {
    ((byte.wrapping_mul(POW3[n]) as u16 * 3) >> 8) as u8
}

/// Packs `m` with `d = f16(m.gamma)` in every block.
pub fn pack(m: &TernaryMatrix) -> Result<Vec<u8>, KernelError> {
    tq::pack::<Base3>(m)
}

/// Unpacks a `rows x cols` TQ1_0 tensor whose nonzero blocks share one scale; non-canonical
/// bytes are an error.
pub fn unpack(bytes: &[u8], rows: usize, cols: usize) -> Result<TernaryMatrix, KernelError> {
    tq::unpack::<Base3>(bytes, rows, cols)
}

/// Quantizes f32 values to TQ1_0 exactly as ggml's `quantize_row_tq1_0_ref` (and gguf-py):
/// per block `d = max|x|`, `c = lroundf(x * (1/d)) + 1` (ties away from zero), `d` stored as
/// f16. `x` is one or more whole rows; its length must be a multiple of 256.
pub fn quantize_tq1_0_f32(x: &[f32]) -> Result<Vec<u8>, KernelError> {
    tq::quantize::<Base3>(x)
}

/// Dequantizes TQ1_0 bytes to f32 as ggml's `dequantize_row_tq1_0`: `(c - 1) * d`, any byte
/// accepted.
pub fn dequantize_tq1_0_f32(bytes: &[u8]) -> Result<Vec<f32>, KernelError> {
    tq::dequantize::<Base3>(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::tq::testing::{self, fixture_input};
    use super::*;
    use crate::rng::Rng;
    use half::f16;

    fn one_block(v: Vec<i8>) -> Vec<u8> {
        pack(&TernaryMatrix::new(1, 256, v, 1.0).unwrap()).unwrap()
    }

    #[test]
    fn round_trip_random_shapes() {
        testing::round_trip_random_shapes::<Base3>(4);
    }

    #[test]
    fn slots_cover_the_block_once() {
        let mut seen = [[false; 5]; CODE_BYTES];
        for e in 0..256 {
            let (byte, n) = slot(e);
            assert!(!seen[byte][n], "value {e}");
            seen[byte][n] = true;
        }
        // Only the qh padding trits stay free.
        let free: Vec<_> = (0..CODE_BYTES)
            .flat_map(|b| (0..5).map(move |n| (b, n)))
            .filter(|&(b, n)| !seen[b][n])
            .collect();
        assert_eq!(free, vec![(48, 4), (49, 4), (50, 4), (51, 4)]);
    }

    #[test]
    fn hand_computed_uniform_blocks() {
        // All +1 (code 2): qs v = 2*121 = 242 -> ceil(242*256/243) = 255;
        // qh v = 2*(81+27+9+3) = 240 -> 253. d = f16(1.0) = 0x3C00.
        let b = one_block(vec![1; 256]);
        assert!(b[..48].iter().all(|&x| x == 255) && b[48..52].iter().all(|&x| x == 253));
        assert_eq!(&b[52..], &[0x00, 0x3C]);
        // All 0 (code 1): qs v = 121 -> 128; qh v = 120 -> 127.
        let b = one_block(vec![0; 256]);
        assert!(b[..48].iter().all(|&x| x == 128) && b[48..52].iter().all(|&x| x == 127));
        // All -1 (code 0): every byte 0.
        assert!(one_block(vec![-1; 256])[..52].iter().all(|&x| x == 0));
    }

    #[test]
    fn hand_computed_single_values() {
        // Background of zeros (qs 128, qh 127) with one value changed each time.
        let cases: [(usize, i8, usize, u8); 5] = [
            (0, 1, 0, 213),    // qs[0] trit 0: codes 2,1,1,1,1 -> v 202 -> 213
            (33, -1, 1, 100),  // qs[1] trit 1: codes 1,0,1,1,1 -> v 94 -> 100
            (175, 1, 47, 213), // 160 + 15 -> qs[47] trit 0 -> v 202 -> 213
            (240, -1, 48, 42), // qh[0] trit 0: codes 0,1,1,1 + pad -> v 39 -> 42
            (255, 1, 51, 130), // 240 + 3 + 4*3 -> qh[3] trit 3: codes 1,1,1,2 + pad -> v 123 -> 130
        ];
        for (e, q, byte, expected) in cases {
            let mut v = vec![0i8; 256];
            v[e] = q;
            let mut want = [128u8; 52];
            want[48..].fill(127);
            want[byte] = expected;
            assert_eq!(one_block(v)[..52], want, "value {e}");
        }
    }

    #[test]
    fn trit_decoding_reads_most_significant_first() {
        // v = 2*81 + 0*27 + 1*9 + 2*3 + 0 = 177 -> ceil(177*256/243) = 187.
        assert_eq!(encode_byte(177), 187);
        let trits: Vec<u8> = (0..5).map(|n| trit(187, n)).collect();
        assert_eq!(trits, vec![2, 0, 1, 2, 0]);
    }

    /// Bytes produced by gguf-py 0.19 (`gguf.quants.quantize(x, TQ1_0)`) for `fixture_input`.
    #[test]
    fn quantize_matches_gguf_py() {
        testing::quantize_matches_gguf_py::<Base3>(
            "296d7a486dd24676d36c7a456dcf466dd3467ad36c7a456dcf466dd39b7ad36c7cf25e7f5174d51b7ef25d7c475ed451de925f334042\
             2b80839964808188cc2b80839964808188cc2b80839964808188cc2b8083996481d42b9c648976837d81d42b9c6489767c7fd4300040\
             8080808080808080808080808080808080808080808080808080808080808080808080808080808080808080808080807f7f7f7f0000",
        );
    }

    #[test]
    fn quantize_agrees_with_tq2_0_codes() {
        // Both ggml quantizers use the same scale and rounding; only the packing differs.
        let x = fixture_input();
        let a = dequantize_tq1_0_f32(&quantize_tq1_0_f32(&x).unwrap()).unwrap();
        let b = super::super::tq2_0::dequantize_tq2_0_f32(
            &super::super::tq2_0::quantize_tq2_0_f32(&x).unwrap(),
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn pack_equals_ggml_quantize_of_dequantized() {
        let mut rng = Rng::new(6);
        let m = TernaryMatrix::random(4, 512, 0.037, &mut rng);
        assert_eq!(
            pack(&m).unwrap(),
            quantize_tq1_0_f32(&m.dequantize()).unwrap()
        );
        assert_eq!(dequantize_tq1_0_f32(&pack(&m).unwrap()).unwrap(), {
            let g = f16::from_f32(0.037).to_f32();
            m.values.iter().map(|&q| q as f32 * g).collect::<Vec<_>>()
        });
    }

    #[test]
    fn unpack_scale_rules() {
        // ggml writes d = 0 for the all-zero second block; it is skipped.
        let mut x = vec![0.0f32; 512];
        x[10] = -0.5;
        assert_eq!(
            unpack(&quantize_tq1_0_f32(&x).unwrap(), 2, 256)
                .unwrap()
                .gamma,
            0.5
        );
        // Different scales in nonzero blocks are an error naming both blocks.
        x[256..].fill(0.25);
        let msg = unpack(&quantize_tq1_0_f32(&x).unwrap(), 1, 512)
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("tq1_0:")
                && msg.contains("block 0 (row 0) has d = 0.5")
                && msg.contains("block 1"),
            "{msg}"
        );
    }

    #[test]
    fn non_canonical_bytes_are_rejected_by_unpack_only() {
        let mut b = one_block(vec![0; 256]);
        b[5] = 1; // no v < 243 encodes to 1 (v = 0 -> 0, v = 1 -> 2)
        let msg = unpack(&b, 1, 256).unwrap_err().to_string();
        assert!(msg.contains("tq1_0") && msg.contains("qs[5] = 1"), "{msg}");
        // ggml decodes it anyway, as five code-0 trits (-1).
        let d = dequantize_tq1_0_f32(&b).unwrap();
        assert_eq!([d[5], d[37], d[69], d[101], d[133]], [-1.0; 5]);

        let mut b = one_block(vec![0; 256]);
        b[49] = 255; // canonical in qs, but its padding trit is 2
        let msg = unpack(&b, 1, 256).unwrap_err().to_string();
        assert!(msg.contains("qh[1] = 255"), "{msg}");
        // ggml ignores the padding trit: values 241, 245, 249, 253 read as +1.
        let d = dequantize_tq1_0_f32(&b).unwrap();
        assert_eq!([d[241], d[245], d[249], d[253]], [1.0; 4]);
    }

    #[test]
    fn shape_and_length_errors() {
        testing::shape_and_length_errors::<Base3>();
    }
}
