//! The codec table: one entry per block type, in the spirit of ggml's `type_traits`
//! (`{blck_size, type_size, to_float, from_float_ref, ...}` per type), so that sizes and
//! conversions are defined once and the reader, the writer and `tern-convert` all look them up
//! here. A new GGUF type is a [`GgmlType`] variant and one entry in [`GgmlType::traits`].
//!
//! The dense codecs live in [`crate::quants`]; the ternary block layouts live in
//! `tern_kernels::formats`, next to `TernaryMatrix` and the compute layouts they feed.

use tern_kernels::formats::{i2s, tq1_0, tq2_0};
use tern_kernels::{KernelError, TernaryMatrix};

use crate::quants;
use crate::types::GgmlType;

/// Bytes holding `n` values (sizes already checked) to f32.
pub type ToFloat = fn(bytes: &[u8], n: usize) -> Result<Vec<f32>, String>;
/// f32 values (whole blocks) to bytes.
pub type FromFloat = fn(&[f32]) -> Result<Vec<u8>, String>;

/// How one type is stored and converted.
#[derive(Debug)]
pub struct TypeTraits {
    pub ty: GgmlType,
    /// ggml's name (`F32`, `Q6_K`, ...), as llama.cpp logs and docs spell it.
    pub name: &'static str,
    /// Values per block (ggml's `blck_size`).
    pub block_size: usize,
    /// Bytes per block (ggml's `type_size`).
    pub type_size: usize,
    /// `None` for ggml's rule (every row, `ne0`, is whole blocks). `Some(tail)` for a type
    /// whose blocks run through the flattened tensor with `tail` bytes after them: bitnet.cpp's
    /// I2_S (`n/4` code bytes, then its f32 scale padded to 32 bytes).
    pub tensor_tail: Option<usize>,
    /// f32 values of `bytes`, already checked to be the size of `n` values (ggml's
    /// `to_float`); [`quants::dequantize`] is the checked entry.
    pub to_float: ToFloat,
    /// Bytes of f32 values, a multiple of `block_size` of them (ggml's `from_float_ref`), for
    /// the types tern has a quantizer for; [`quants::quantize`] is the entry. Error per value,
    /// where `e(d)` is half an f16 ulp of `d` (the scale's storage): F32 exact; F16 and BF16
    /// round to nearest even; Q8_0 `d/2 + 127 e(d)` with `d = max|x| / 127` per 32 values;
    /// TQ1_0 / TQ2_0 `d/2 + e(d)` with `d = max|x|` per 256; Q6_K (tern's own) under 2%
    /// relative L2 on ordinary weights (`tests/codec_table.rs` checks each).
    pub from_float: Option<FromFloat>,
    /// The exact conversion of a ternary type to and from one-scale ternary values.
    pub ternary: Option<TernaryCodec>,
}

/// The lossless path of a ternary type: `to_ternary(from_ternary(m)) == m` (gamma rounded to
/// the type's scale precision: f16 for TQ1_0/TQ2_0, exact for I2_S).
#[derive(Debug)]
pub struct TernaryCodec {
    /// `rows x cols` ternary values with one scale; errors where the bytes hold something a
    /// `TernaryMatrix` cannot (blocks with different scales, invalid codes).
    pub to_ternary:
        fn(bytes: &[u8], rows: usize, cols: usize) -> Result<TernaryMatrix, KernelError>,
    pub from_ternary: fn(&TernaryMatrix) -> Result<Vec<u8>, KernelError>,
}

impl GgmlType {
    /// This type's entry in the codec table.
    pub fn traits(self) -> &'static TypeTraits {
        match self {
            GgmlType::F32 => &F32,
            GgmlType::F16 => &F16,
            GgmlType::Q4_0 => &Q4_0,
            GgmlType::Q8_0 => &Q8_0,
            GgmlType::Q4_K => &Q4_K,
            GgmlType::Q6_K => &Q6_K,
            GgmlType::BF16 => &BF16,
            GgmlType::TQ1_0 => &TQ1_0,
            GgmlType::TQ2_0 => &TQ2_0,
            GgmlType::I2_S => &I2_S,
        }
    }
}

fn kernel_err<T>(r: Result<T, KernelError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

static F32: TypeTraits = TypeTraits {
    ty: GgmlType::F32,
    name: "F32",
    block_size: 1,
    type_size: 4,
    tensor_tail: None,
    to_float: |b, _| Ok(quants::dequantize_f32(b)),
    from_float: Some(|x| Ok(quants::f32_to_bytes(x))),
    ternary: None,
};

static F16: TypeTraits = TypeTraits {
    ty: GgmlType::F16,
    name: "F16",
    block_size: 1,
    type_size: 2,
    tensor_tail: None,
    to_float: |b, _| Ok(quants::dequantize_f16(b)),
    from_float: Some(|x| Ok(quants::f32_to_f16_bytes(x))),
    ternary: None,
};

static BF16: TypeTraits = TypeTraits {
    ty: GgmlType::BF16,
    name: "BF16",
    block_size: 1,
    type_size: 2,
    tensor_tail: None,
    to_float: |b, _| Ok(quants::dequantize_bf16(b)),
    from_float: Some(|x| Ok(quants::f32_to_bf16_bytes(x))),
    ternary: None,
};

static Q4_0: TypeTraits = TypeTraits {
    ty: GgmlType::Q4_0,
    name: "Q4_0",
    block_size: 32,
    type_size: 18,
    tensor_tail: None,
    to_float: |b, _| Ok(quants::dequantize_q4_0(b)),
    from_float: None,
    ternary: None,
};

static Q8_0: TypeTraits = TypeTraits {
    ty: GgmlType::Q8_0,
    name: "Q8_0",
    block_size: 32,
    type_size: 34,
    tensor_tail: None,
    to_float: |b, _| Ok(quants::dequantize_q8_0(b)),
    from_float: Some(quants::quantize_q8_0),
    ternary: None,
};

static Q4_K: TypeTraits = TypeTraits {
    ty: GgmlType::Q4_K,
    name: "Q4_K",
    block_size: 256,
    type_size: 144,
    tensor_tail: None,
    to_float: |b, _| Ok(quants::dequantize_q4_k(b)),
    from_float: None,
    ternary: None,
};

static Q6_K: TypeTraits = TypeTraits {
    ty: GgmlType::Q6_K,
    name: "Q6_K",
    block_size: 256,
    type_size: 210,
    tensor_tail: None,
    to_float: |b, _| Ok(quants::dequantize_q6_k(b)),
    from_float: Some(quants::quantize_q6_k),
    ternary: None,
};

static TQ1_0: TypeTraits = TypeTraits {
    ty: GgmlType::TQ1_0,
    name: "TQ1_0",
    block_size: tq1_0::BLOCK,
    type_size: tq1_0::BLOCK_BYTES,
    tensor_tail: None,
    to_float: |b, _| kernel_err(tq1_0::dequantize_tq1_0_f32(b)),
    from_float: Some(|x| kernel_err(tq1_0::quantize_tq1_0_f32(x))),
    ternary: Some(TernaryCodec {
        to_ternary: tq1_0::unpack,
        from_ternary: tq1_0::pack,
    }),
};

static TQ2_0: TypeTraits = TypeTraits {
    ty: GgmlType::TQ2_0,
    name: "TQ2_0",
    block_size: tq2_0::BLOCK,
    type_size: tq2_0::BLOCK_BYTES,
    tensor_tail: None,
    to_float: |b, _| kernel_err(tq2_0::dequantize_tq2_0_f32(b)),
    from_float: Some(|x| kernel_err(tq2_0::quantize_tq2_0_f32(x))),
    ternary: Some(TernaryCodec {
        to_ternary: tq2_0::unpack,
        from_ternary: tq2_0::pack,
    }),
};

/// Not a block type: bitnet.cpp sizes it `n/4 + 32` for the whole tensor, so its "block" is
/// the 4 values of one code byte and the tail holds the scale.
static I2_S: TypeTraits = TypeTraits {
    ty: GgmlType::I2_S,
    name: "I2_S",
    block_size: 4,
    type_size: 1,
    tensor_tail: Some(i2s::TAIL_BYTES),
    to_float: quants::dequantize_i2_s,
    from_float: None,
    ternary: Some(TernaryCodec {
        to_ternary: i2s::unpack,
        from_ternary: i2s::pack,
    }),
};
