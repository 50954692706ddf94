//! Hugging Face transformers BitNet packed weights (`uint8`, 4 codes per byte).
//!
//! Layout (transformers `src/transformers/integrations/bitnet.py`, `pack_weights` and
//! `unpack_weights`, read at 0b4060e7):
//!
//! - each weight q in {-1, 0, 1} is stored as the code `c = q + 1` in {0, 1, 2};
//! - the matrix `[out][in]` is packed along dimension 0 (out_features) into a `uint8` tensor of
//!   shape `[R, in]` with `R = ceil(out / 4)`;
//! - byte `P[r, k]` holds four *planes*: bits `2i..2i+2` (i = 0..4, bits 1:0 = plane 0) are
//!   the code of row `i*R + r`, column `k`. Plane i is the contiguous block of rows
//!   `i*R .. (i+1)*R`; rows are not interleaved.
//!
//! The per-tensor scale travels separately as `<module>.weight_scale` (shape `[1]`); callers
//! pass it in as `gamma` and decide its meaning (mean|W| or its reciprocal, depending on the
//! checkpoint's `linear_class`).
//!
//! Decisions:
//! - **out not a multiple of 4.** `pack_weights` rounds R up and leaves the bits of the missing
//!   rows (`i*R + r >= out`) at zero. [`pack`] does the same, so its bytes equal transformers'
//!   for every shape. (transformers' own `BitLinear` only allocates `out / 4` rows, and
//!   `unpack_weights` would decode the zero padding as -1, so such tensors do not occur in
//!   its checkpoints.) [`unpack`] takes the true row count and ignores the padding bits.
//! - **code 3** never appears in a valid file; transformers would decode it to +2 and the
//!   upstream llama.cpp converter maps it to 0. [`unpack`] rejects it instead, naming the row
//!   and column, because silently changing a weight hides a corrupt or misread tensor.

use super::{check_byte_len, TernaryMatrix};
use crate::error::KernelError;

const FORMAT: &str = "hf-bitnet";

/// Rows of the packed tensor for a matrix with `rows` output features: `ceil(rows / 4)`.
pub fn packed_rows(rows: usize) -> usize {
    rows.div_ceil(4)
}

/// Packs a matrix the way transformers' `pack_weights` does. Returns the bytes (row-major
/// `[packed_rows][cols]`) and `packed_rows`; `gamma` is not stored (it is `weight_scale`).
pub fn pack(m: &TernaryMatrix) -> Result<(Vec<u8>, usize), KernelError> {
    m.check(FORMAT)?;
    let r_count = packed_rows(m.rows);
    let mut out = vec![0u8; r_count * m.cols];
    for (row, values) in m
        .values
        .chunks_exact(m.cols.max(1))
        .enumerate()
        .take(m.rows)
    {
        let (plane, r) = (row / r_count, row % r_count);
        let dst = &mut out[r * m.cols..(r + 1) * m.cols];
        for (byte, &q) in dst.iter_mut().zip(values) {
            *byte |= ((q + 1) as u8) << (2 * plane);
        }
    }
    Ok((out, r_count))
}

/// Unpacks `[ceil(rows/4)][cols]` bytes into a `rows x cols` matrix with scale `gamma`.
///
/// Errors on a wrong byte count and on code 3 in any real (non-padding) row.
pub fn unpack(
    bytes: &[u8],
    rows: usize,
    cols: usize,
    gamma: f32,
) -> Result<TernaryMatrix, KernelError> {
    let r_count = packed_rows(rows);
    let expected = r_count
        .checked_mul(cols)
        .ok_or_else(|| KernelError::Shape {
            format: FORMAT,
            what: format!("{rows}x{cols} overflows usize"),
        })?;
    check_byte_len(bytes, expected, rows, cols, FORMAT)?;
    let mut values = vec![0i8; rows * cols];
    for row in 0..rows {
        let (plane, r) = (row / r_count, row % r_count);
        for k in 0..cols {
            let code = (bytes[r * cols + k] >> (2 * plane)) & 3;
            if code == 3 {
                return Err(KernelError::Invalid {
                    format: FORMAT,
                    what: format!(
                        "code 3 at row {row}, column {k} (packed byte [{r}, {k}], bits {}..{}); \
                         codes are 0, 1, 2",
                        2 * plane,
                        2 * plane + 2
                    ),
                });
            }
            values[row * cols + k] = code as i8 - 1;
        }
    }
    Ok(TernaryMatrix {
        rows,
        cols,
        values,
        gamma,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn mat(rows: usize, cols: usize, values: Vec<i8>) -> TernaryMatrix {
        TernaryMatrix::new(rows, cols, values, 0.5).unwrap()
    }

    #[test]
    fn round_trip_random_shapes() {
        let mut rng = Rng::new(7);
        for &(rows, cols) in &[
            (1, 1),
            (3, 5),
            (4, 8),
            (5, 3),
            (7, 16),
            (9, 2),
            (13, 33),
            (64, 40),
            (130, 7),
        ] {
            let m = TernaryMatrix::random(rows, cols, 1.25, &mut rng);
            let (bytes, r) = pack(&m).unwrap();
            assert_eq!(r, rows.div_ceil(4));
            assert_eq!(bytes.len(), r * cols);
            assert_eq!(
                unpack(&bytes, rows, cols, 1.25).unwrap(),
                m,
                "{rows}x{cols}"
            );
        }
    }

    #[test]
    fn empty_matrix() {
        let m = mat(0, 3, vec![]);
        let (bytes, r) = pack(&m).unwrap();
        assert_eq!((bytes.len(), r), (0, 0));
        assert_eq!(unpack(&bytes, 0, 3, 0.5).unwrap(), m);
    }

    /// 8 rows -> R = 2: byte [r, k] holds rows r, 2+r, 4+r, 6+r in bits 1:0, 3:2, 5:4, 7:6.
    #[test]
    fn hand_computed_planes() {
        // Column 0 only; rows 0..8 = [-1, 0, 1, -1, 0, 1, 1, 0] -> codes [0, 1, 2, 0, 1, 2, 2, 1].
        let m = mat(8, 1, vec![-1, 0, 1, -1, 0, 1, 1, 0]);
        let (bytes, r) = pack(&m).unwrap();
        assert_eq!(r, 2);
        // Byte 0: rows 0, 2, 4, 6 = codes 0, 2, 1, 2 -> 0b10_01_10_00.
        // Byte 1: rows 1, 3, 5, 7 = codes 1, 0, 2, 1 -> 0b01_10_00_01.
        assert_eq!(bytes, vec![0b1001_1000, 0b0110_0001]);
    }

    /// The example in the docstring of transformers' `unpack_weights`: a [2, 2] packed tensor
    /// unpacks to 8 rows.
    #[test]
    fn transformers_docstring_example() {
        let packed = [0b1010_0001, 0b0001_1000, 0b1001_0000, 0b0000_1010];
        let m = unpack(&packed, 8, 2, 1.0).unwrap();
        let expected: Vec<i8> = vec![0, -1, -1, 1, -1, 1, -1, 1, 1, 0, 0, -1, 1, -1, 1, -1];
        assert_eq!(m.values, expected);
    }

    /// out = 5 -> R = 2. Plane 2 holds row 4 in packed row 0 only; the rest of the byte
    /// (padding rows 5, 6, 7) stays zero, as transformers' `pack_weights` leaves it.
    #[test]
    fn odd_rows_padding_is_zero() {
        let m = mat(5, 1, vec![1, 1, 1, 1, 1]); // every code 2
        let (bytes, r) = pack(&m).unwrap();
        assert_eq!(r, 2);
        assert_eq!(bytes, vec![0b00_10_10_10, 0b00_00_10_10]);
        // Padding bits are ignored on the way back, whatever they hold.
        let dirty = [0b11_10_10_10, 0b11_11_10_10];
        assert_eq!(unpack(&dirty, 5, 1, 0.5).unwrap(), m);
    }

    #[test]
    fn wrong_byte_length() {
        let huge = unpack(&[], usize::MAX, 8, 1.0);
        assert!(matches!(huge, Err(KernelError::Shape { .. })));
        let err = unpack(&[0u8; 5], 5, 3, 1.0).unwrap_err();
        assert_eq!(
            err,
            KernelError::ByteLength {
                format: "hf-bitnet",
                rows: 5,
                cols: 3,
                expected: 6,
                got: 5
            }
        );
    }

    #[test]
    fn code_3_is_rejected() {
        // 4 rows x 2 cols, R = 1. Row 2 (plane 2, bits 5:4) of column 1 holds code 3.
        let bytes = [0b01_01_01_01, 0b01_11_01_01];
        let err = unpack(&bytes, 4, 2, 1.0).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("hf-bitnet") && msg.contains("row 2, column 1"),
            "{msg}"
        );
    }

    #[test]
    fn pack_rejects_bad_matrix() {
        let bad = TernaryMatrix {
            rows: 2,
            cols: 2,
            values: vec![0, 2, 0, 0],
            gamma: 1.0,
        };
        assert!(matches!(
            pack(&bad),
            Err(KernelError::NotTernary {
                index: 1,
                value: 2,
                ..
            })
        ));
        let short = TernaryMatrix {
            values: vec![0; 3],
            ..bad
        };
        assert!(matches!(pack(&short), Err(KernelError::Shape { .. })));
    }
}
