//! What llama.cpp's two ternary block types share, written once: [`super::tq1_0`] (base 3,
//! 1.69 bits) and [`super::tq2_0`] (2 bits) differ only in how a block's 256 codes are packed
//! into bytes, which each supplies as a [`Packing`].
//!
//! Common layout (ggml-org/llama.cpp `ggml/src/ggml-common.h::block_tq1_0` / `block_tq2_0`):
//! a block is 256 consecutive values of one row, stored as codes `c = q + 1` in {0, 1, 2},
//! then its scale `d` (f16, little endian) in the last two bytes; value = `(c - 1) * d`. Rows
//! must be a multiple of 256 long; blocks never span rows.
//!
//! ggml's quantizer (`quantize_row_tq{1,2}_0_ref`, and gguf-py) sets `d = max|x|` per block and
//! `c = lroundf(x / d) + 1`. For BitNet weights that are already ternary times gamma this gives
//! `d = gamma` in every block that has a nonzero weight and `d = 0` in all-zero blocks.
//!
//! Decisions:
//! - [`pack`] writes `d = f16(gamma)` in **every** block, all-zero blocks included, so gamma
//!   survives even an all-zero tensor. Otherwise its bytes equal [`quantize`] of the
//!   dequantized matrix (tested in each format).
//! - [`unpack`] needs one scale for the whole tensor: it takes the common `d` of the blocks
//!   that hold a nonzero weight (all-zero blocks are skipped, whatever their `d`) and
//!   **errors** if those differ, because averaging would silently change weights. Use
//!   [`dequantize`] for tensors with real per-block scales. Gamma comes back rounded to f16.
//! - [`unpack`] rejects codes ggml cannot write (code 3, and whatever [`Packing::check`]
//!   refuses); [`dequantize`] decodes any byte as ggml does.

use half::f16;

use super::{check_byte_len, TernaryMatrix};
use crate::error::KernelError;

/// Values per block.
pub const BLOCK: usize = 256;

/// One format's packing of a block's 256 codes into its code bytes (the block without its
/// trailing f16 scale).
pub(super) trait Packing {
    /// The format's name in errors (`tq1_0`, `tq2_0`).
    const FORMAT: &'static str;
    /// Bytes per block: the code bytes, then 2 for the scale.
    const BLOCK_BYTES: usize;

    /// Writes 256 codes (value order) into `qs`, overwriting every byte.
    fn encode(codes: impl Iterator<Item = u8>, qs: &mut [u8]);

    /// The code of value `e` (0..256), as ggml's decoder reads it.
    fn code(qs: &[u8], e: usize) -> u8;

    /// Rejects code bytes of block `block` that ggml cannot have written, beyond code 3 (which
    /// [`unpack`] checks itself).
    fn check(_qs: &[u8], _block: usize) -> Result<(), KernelError> {
        Ok(())
    }
}

/// Byte size of a `rows x cols` tensor (`cols` a multiple of [`BLOCK`]).
pub(super) fn byte_len<P: Packing>(rows: usize, cols: usize) -> usize {
    rows * (cols / BLOCK) * P::BLOCK_BYTES
}

fn encode_block<P: Packing>(codes: impl Iterator<Item = u8>, d: f16, block: &mut [u8]) {
    let (qs, scale) = block.split_at_mut(P::BLOCK_BYTES - 2);
    P::encode(codes, qs);
    scale.copy_from_slice(&d.to_le_bytes());
}

/// A block's code bytes and its scale.
fn split_block<P: Packing>(block: &[u8]) -> (&[u8], f16) {
    let (qs, d) = block.split_at(P::BLOCK_BYTES - 2);
    (qs, f16::from_le_bytes([d[0], d[1]]))
}

/// Packs `m` with `d = f16(m.gamma)` in every block.
pub(super) fn pack<P: Packing>(m: &TernaryMatrix) -> Result<Vec<u8>, KernelError> {
    m.check(P::FORMAT)?;
    check_cols(m.rows, m.cols, P::FORMAT)?;
    let d = gamma_to_f16(m.gamma, P::FORMAT)?;
    let mut out = vec![0u8; byte_len::<P>(m.rows, m.cols)];
    for (values, block) in m
        .values
        .chunks_exact(BLOCK)
        .zip(out.chunks_exact_mut(P::BLOCK_BYTES))
    {
        encode_block::<P>(values.iter().map(|&q| (q + 1) as u8), d, block);
    }
    Ok(out)
}

/// Unpacks a `rows x cols` tensor whose nonzero blocks share one scale.
pub(super) fn unpack<P: Packing>(
    bytes: &[u8],
    rows: usize,
    cols: usize,
) -> Result<TernaryMatrix, KernelError> {
    check_cols(rows, cols, P::FORMAT)?;
    check_len(bytes, rows, cols, P::BLOCK_BYTES, P::FORMAT)?;
    let mut values = vec![0i8; rows * cols];
    let mut scales = Vec::with_capacity(bytes.len() / P::BLOCK_BYTES);
    for (b, (block, out)) in bytes
        .chunks_exact(P::BLOCK_BYTES)
        .zip(values.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        let (qs, d) = split_block::<P>(block);
        P::check(qs, b)?;
        for (e, v) in out.iter_mut().enumerate() {
            let c = P::code(qs, e);
            if c == 3 {
                let flat = b * BLOCK + e;
                return Err(KernelError::Invalid {
                    format: P::FORMAT,
                    what: format!(
                        "code 3 at row {}, column {} (block {b}, value {e}); codes are 0, 1, 2",
                        flat / cols,
                        flat % cols
                    ),
                });
            }
            *v = c as i8 - 1;
        }
        scales.push((d, out.iter().any(|&v| v != 0)));
    }
    let gamma = tensor_gamma(&scales, cols / BLOCK, P::FORMAT)?;
    Ok(TernaryMatrix {
        rows,
        cols,
        values,
        gamma,
    })
}

/// Quantizes f32 values exactly as ggml's `quantize_row_tq*_0_ref` (and gguf-py): per block
/// `d = max|x|`, `c = lroundf(x * (1/d)) + 1` (ties away from zero), `d` stored as f16. `x` is
/// one or more whole rows; its length must be a multiple of 256.
pub(super) fn quantize<P: Packing>(x: &[f32]) -> Result<Vec<u8>, KernelError> {
    check_f32_len(x.len(), P::FORMAT)?;
    let mut out = vec![0u8; x.len() / BLOCK * P::BLOCK_BYTES];
    for (xb, block) in x
        .chunks_exact(BLOCK)
        .zip(out.chunks_exact_mut(P::BLOCK_BYTES))
    {
        let (d, id) = ggml_block_scale(xb);
        encode_block::<P>(
            xb.iter().map(|&v| ggml_code(v, id)),
            f16::from_f32(d),
            block,
        );
    }
    Ok(out)
}

/// Dequantizes to f32 as ggml's `dequantize_row_tq*_0`: `(c - 1) * d` with each block's own
/// `d`, any byte accepted.
pub(super) fn dequantize<P: Packing>(bytes: &[u8]) -> Result<Vec<f32>, KernelError> {
    check_block_bytes(bytes.len(), P::BLOCK_BYTES, P::FORMAT)?;
    let mut out = Vec::with_capacity(bytes.len() / P::BLOCK_BYTES * BLOCK);
    for block in bytes.chunks_exact(P::BLOCK_BYTES) {
        let (qs, d) = split_block::<P>(block);
        let d = d.to_f32();
        out.extend((0..BLOCK).map(|e| (P::code(qs, e) as i32 - 1) as f32 * d));
    }
    Ok(out)
}

/// ggml's block scale: `d = max|x|` with C's `MAX(a, b) = a > b ? a : b` (so a NaN only
/// sticks if nothing follows it), and `id = d ? 1/d : 0`.
fn ggml_block_scale(xb: &[f32]) -> (f32, f32) {
    let d = xb.iter().fold(
        0.0f32,
        |amax, v| if amax > v.abs() { amax } else { v.abs() },
    );
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// ggml's code `lroundf(x * id) + 1`. `f32::round` rounds ties away from zero like `lroundf`.
/// For finite inputs `|x * id| <= 1` up to one ulp, so the clamp never fires; it only keeps
/// codes valid where ggml's `lroundf` is undefined (inf, NaN -> weight 0).
fn ggml_code(x: f32, id: f32) -> u8 {
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
fn tensor_gamma(
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
fn gamma_to_f16(gamma: f32, format: &'static str) -> Result<f16, KernelError> {
    let d = f16::from_f32(gamma);
    if gamma.is_finite() && !d.is_finite() {
        return Err(KernelError::Invalid {
            format,
            what: format!("gamma {gamma} overflows the f16 block scale"),
        });
    }
    Ok(d)
}

fn check_cols(rows: usize, cols: usize, format: &'static str) -> Result<(), KernelError> {
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
fn check_len(
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
    check_byte_len(bytes, expected, rows, cols, format)
}

fn check_f32_len(len: usize, format: &'static str) -> Result<(), KernelError> {
    if !len.is_multiple_of(BLOCK) {
        return Err(KernelError::Shape {
            format,
            what: format!("{len} values is not a multiple of the {BLOCK}-value block"),
        });
    }
    Ok(())
}

fn check_block_bytes(
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

/// Tests both formats run: the gguf-py fixture input, the round trip and the error paths.
#[cfg(test)]
pub(super) mod testing {
    use super::{dequantize, pack, quantize, unpack, Packing, TernaryMatrix};
    use crate::error::KernelError;
    use crate::rng::Rng;

    /// Bytes from a hex dump (whitespace ignored).
    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Three blocks: a spread of values (amax 3.125), exact ties at +-0.5 after scaling by
    /// 1/2, and all zeros. Every value is exact in f32 and in numpy.
    pub fn fixture_input() -> Vec<f32> {
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

    /// ggml's quantizer, as written here, gives gguf-py's bytes (`hex_dump`) for
    /// [`fixture_input`].
    pub fn quantize_matches_gguf_py<P: Packing>(hex_dump: &str) {
        assert_eq!(quantize::<P>(&fixture_input()).unwrap(), hex(hex_dump));
    }

    /// `unpack(pack(m)) == m` and the byte count, over several shapes and gammas.
    pub fn round_trip_random_shapes<P: Packing>(seed: u64) {
        let mut rng = Rng::new(seed);
        for &(rows, cols) in &[(1, 256), (3, 512), (4, 768), (7, 256), (2, 2560)] {
            for gamma in [0.5f32, 1.25, 0.0146484375] {
                let m = TernaryMatrix::random(rows, cols, gamma, &mut rng);
                let bytes = pack::<P>(&m).unwrap();
                assert_eq!(bytes.len(), rows * cols / 256 * P::BLOCK_BYTES);
                assert_eq!(
                    unpack::<P>(&bytes, rows, cols).unwrap(),
                    m,
                    "{rows}x{cols} gamma {gamma}"
                );
            }
        }
    }

    /// Every shape, length and matrix error of the four entry points.
    pub fn shape_and_length_errors<P: Packing>() {
        let bb = P::BLOCK_BYTES;
        let huge = unpack::<P>(&[], usize::MAX, 512);
        assert!(matches!(huge, Err(KernelError::Shape { .. })));
        for cols in [128, 200] {
            assert!(matches!(
                unpack::<P>(&vec![0u8; bb], 1, cols),
                Err(KernelError::Shape { .. })
            ));
        }
        assert_eq!(
            unpack::<P>(&vec![0u8; 2 * bb - 1], 2, 256).unwrap_err(),
            KernelError::ByteLength {
                format: P::FORMAT,
                rows: 2,
                cols: 256,
                expected: 2 * bb,
                got: 2 * bb - 1
            }
        );
        let m = TernaryMatrix::new(1, 300, vec![0; 300], 1.0).unwrap();
        assert!(matches!(
            pack::<P>(&m),
            Err(KernelError::Shape { format, .. }) if format == P::FORMAT
        ));
        let m = TernaryMatrix::new(2, 128, vec![0; 256], 1.0).unwrap();
        assert!(matches!(pack::<P>(&m), Err(KernelError::Shape { .. })));
        for n in [100, 255] {
            assert!(matches!(
                quantize::<P>(&vec![0.0; n]),
                Err(KernelError::Shape { .. })
            ));
        }
        assert!(matches!(
            dequantize::<P>(&vec![0u8; bb - 1]),
            Err(KernelError::Shape { .. })
        ));
        let bad = TernaryMatrix {
            rows: 1,
            cols: 256,
            values: vec![-2; 256],
            gamma: 1.0,
        };
        assert!(matches!(
            pack::<P>(&bad),
            Err(KernelError::NotTernary { .. })
        ));
        let huge = TernaryMatrix::new(1, 256, vec![1; 256], 1e6).unwrap();
        assert!(matches!(pack::<P>(&huge), Err(KernelError::Invalid { .. })));
    }
}
