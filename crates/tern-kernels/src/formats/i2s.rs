//! bitnet.cpp I2_S (GGUF type 36 in the BitNet fork), x86 `ACT_PARALLEL` layout.
//!
//! Layout (microsoft/BitNet `src/ggml-bitnet-mad.cpp::quantize_i2_s`, x86 `ACT_PARALLEL`
//! branch, the default in `include/gemm-config.h`; the same layout is written by
//! `utils/convert-hf-to-gguf-bitnet.py::quantize_to_i2_s`; read at 16da220):
//!
//! - the tensor `[out][in]` is flattened row-major (ggml `ne0 = in` varies fastest) into
//!   n values, stored as codes `c = q + 1` (0 -> -1, 1 -> 0, 2 -> +1);
//! - every 128 consecutive values form a block of 32 bytes: byte j (0..32) holds value j in
//!   bits 7:6, value 32+j in bits 5:4, value 64+j in bits 3:2 and value 96+j in bits 1:0;
//! - after the `n / 4` code bytes comes a 32-byte tail whose first 4 bytes are the per-tensor
//!   scale as a little-endian f32 (the multiplier: weight = q * scale). The C writer leaves
//!   the other 28 bytes unwritten, the Python writer zeroes them: [`pack`] writes zeros and
//!   [`unpack`] ignores them. Total size: `n / 4 + 32` bytes.
//!
//! Other bitnet.cpp builds (x86 without `ACT_PARALLEL`, ARM NEON) write different layouts
//! under the same type id; only this one is supported.
//!
//! Decisions:
//! - **n not a multiple of 128.** `quantize_i2_s` packs only `n / 128` whole blocks and drops
//!   the remaining values; the Python writer pads the last block with code 1 and then cuts it
//!   to `n / 4` bytes, which loses values of its later groups. Neither is lossless, so both
//!   [`pack`] and [`unpack`] reject such shapes. (bitnet.cpp's matmul kernels further need
//!   each row to be whole blocks, `in % 128 == 0`; real models have in = 2560 or 6912.)
//! - **code 3** never appears in a valid file; [`unpack`] rejects it, naming the element.

use super::{check_byte_len, TernaryMatrix};
use crate::error::KernelError;

const FORMAT: &str = "i2_s";

/// Values per block.
pub const BLOCK: usize = 128;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 32;
/// Bytes after the codes: the f32 scale, then zero padding.
pub const TAIL_BYTES: usize = 32;

/// Total byte size of an I2_S tensor with `rows * cols` values (a multiple of [`BLOCK`]).
pub fn byte_len(rows: usize, cols: usize) -> usize {
    rows * cols / 4 + TAIL_BYTES
}

/// Byte offset and bit shift of value `e` of the flattened tensor.
fn slot(e: usize) -> (usize, u32) {
    let (block, j) = (e / BLOCK, e % BLOCK);
    (block * BLOCK_BYTES + j % 32, 6 - 2 * (j / 32) as u32)
}

/// Packs `m` as I2_S with `m.gamma` as the scale.
pub fn pack(m: &TernaryMatrix) -> Result<Vec<u8>, KernelError> {
    m.check(FORMAT)?;
    check_shape(m.rows, m.cols)?;
    let n = m.values.len();
    let mut out = vec![0u8; byte_len(m.rows, m.cols)];
    for (e, &q) in m.values.iter().enumerate() {
        let (byte, shift) = slot(e);
        out[byte] |= ((q + 1) as u8) << shift;
    }
    out[n / 4..n / 4 + 4].copy_from_slice(&m.gamma.to_le_bytes());
    Ok(out)
}

/// Unpacks an I2_S tensor of `rows x cols` values; gamma is the scale stored in the tail.
pub fn unpack(bytes: &[u8], rows: usize, cols: usize) -> Result<TernaryMatrix, KernelError> {
    check_shape(rows, cols)?;
    let n = rows * cols;
    let expected = byte_len(rows, cols);
    check_byte_len(bytes, expected, rows, cols, FORMAT)?;
    let mut values = vec![0i8; n];
    for (e, v) in values.iter_mut().enumerate() {
        let (byte, shift) = slot(e);
        let code = (bytes[byte] >> shift) & 3;
        if code == 3 {
            return Err(KernelError::Invalid {
                format: FORMAT,
                what: format!(
                    "code 3 at element {e} (row {}, column {}; byte {byte}, bits {}..{}); \
                     codes are 0, 1, 2",
                    e / cols,
                    e % cols,
                    shift,
                    shift + 2
                ),
            });
        }
        *v = code as i8 - 1;
    }
    let s = &bytes[n / 4..];
    Ok(TernaryMatrix {
        rows,
        cols,
        values,
        gamma: f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
    })
}

fn check_shape(rows: usize, cols: usize) -> Result<(), KernelError> {
    let n = rows.checked_mul(cols).ok_or_else(|| KernelError::Shape {
        format: FORMAT,
        what: format!("{rows}x{cols} overflows usize"),
    })?;
    if !n.is_multiple_of(BLOCK) {
        return Err(KernelError::Shape {
            format: FORMAT,
            what: format!(
                "{rows}x{cols} = {n} values is not a multiple of the {BLOCK}-value block \
                 (bitnet.cpp would drop the last {} values)",
                n % BLOCK
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn round_trip_random_shapes() {
        let mut rng = Rng::new(11);
        for &(rows, cols) in &[
            (1, 128),
            (2, 64),
            (3, 256),
            (5, 384),
            (16, 640),
            (1, 1280),
            (7, 512),
        ] {
            let gamma = 0.1 + rng.unit_f32().abs();
            let m = TernaryMatrix::random(rows, cols, gamma, &mut rng);
            let bytes = pack(&m).unwrap();
            assert_eq!(bytes.len(), rows * cols / 4 + 32);
            assert_eq!(unpack(&bytes, rows, cols).unwrap(), m, "{rows}x{cols}");
        }
    }

    /// One 128-value block: value j goes to byte j % 32 at bits (7 - 2*(j/32)):(6 - 2*(j/32)).
    #[test]
    fn hand_computed_block() {
        let mut v = vec![0i8; 128]; // code 1 everywhere -> every byte 0b01_01_01_01 = 0x55
        v[0] = 1; // byte 0, bits 7:6 -> code 2: 0b10_01_01_01 = 0x95
        v[33] = -1; // byte 1, bits 5:4 -> code 0: 0b01_00_01_01 = 0x45
        v[66] = 1; // byte 2, bits 3:2 -> code 2: 0b01_01_10_01 = 0x59
        v[127] = -1; // byte 31, bits 1:0 -> code 0: 0b01_01_01_00 = 0x54
        let m = TernaryMatrix::new(1, 128, v, 1.5).unwrap();
        let bytes = pack(&m).unwrap();
        let mut expected = vec![0x55u8; 32];
        expected[0] = 0x95;
        expected[1] = 0x45;
        expected[2] = 0x59;
        expected[31] = 0x54;
        // Tail: 1.5f32 = 0x3FC00000, little endian, then 28 zero bytes.
        expected.extend_from_slice(&[0x00, 0x00, 0xC0, 0x3F]);
        expected.extend_from_slice(&[0u8; 28]);
        assert_eq!(bytes, expected);
    }

    /// Blocks run across row boundaries of the flattened tensor: 2 rows of 64 share a block.
    #[test]
    fn blocks_follow_flattened_order() {
        let mut v = vec![-1i8; 128]; // code 0 -> zero bytes
        v[64 + 5] = 1; // row 1, column 5 = flat 69 = 64 + 5 -> byte 5, bits 3:2
        let m = TernaryMatrix::new(2, 64, v, 1.0).unwrap();
        let bytes = pack(&m).unwrap();
        assert_eq!(bytes[5], 0b0000_1000);
        assert_eq!(bytes[..32].iter().filter(|&&b| b != 0).count(), 1);
    }

    #[test]
    fn tail_padding_is_ignored() {
        let m = TernaryMatrix::new(1, 128, vec![0; 128], 2.0).unwrap();
        let mut bytes = pack(&m).unwrap();
        bytes[32 + 4..].fill(0xAB);
        assert_eq!(unpack(&bytes, 1, 128).unwrap(), m);
    }

    #[test]
    fn wrong_byte_length() {
        let huge = unpack(&[], usize::MAX, 128);
        assert!(matches!(huge, Err(KernelError::Shape { .. })));
        let err = unpack(&[0u8; 63], 1, 128).unwrap_err();
        assert_eq!(
            err,
            KernelError::ByteLength {
                format: "i2_s",
                rows: 1,
                cols: 128,
                expected: 64,
                got: 63
            }
        );
    }

    #[test]
    fn not_a_whole_block() {
        let err = unpack(&[0u8; 64], 1, 100).unwrap_err();
        assert!(
            matches!(err, KernelError::Shape { format: "i2_s", .. }),
            "{err}"
        );
        let m = TernaryMatrix::new(3, 50, vec![0; 150], 1.0).unwrap();
        assert!(matches!(pack(&m), Err(KernelError::Shape { .. })));
    }

    #[test]
    fn code_3_is_rejected() {
        let mut bytes = vec![0x55u8; 32 + 32];
        bytes[3] = 0b01_01_11_01; // value 64 + 3 = 67 (row 0, column 67), bits 3:2
        let msg = unpack(&bytes, 1, 128).unwrap_err().to_string();
        assert!(msg.contains("i2_s") && msg.contains("element 67"), "{msg}");
    }

    #[test]
    fn pack_rejects_bad_matrix() {
        let bad = TernaryMatrix {
            rows: 1,
            cols: 128,
            values: vec![3; 128],
            gamma: 1.0,
        };
        assert!(matches!(
            pack(&bad),
            Err(KernelError::NotTernary { index: 0, .. })
        ));
    }
}
