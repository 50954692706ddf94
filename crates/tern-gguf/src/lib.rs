//! GGUF v3 reader and writer for tern.
//!
//! Our own implementation because generic GGUF crates do not know bitnet.cpp's I2_S type
//! (id 36, `n/4 + 32` bytes) and cannot resolve the ids the bitnet.cpp fork and upstream
//! llama.cpp assign differently (see [`TypeContext`] and `docs/formats.md`).
//!
//! - [`GgufFile::open`] memory-maps a file, validates every count, size and offset against the
//!   file length, and hands out zero-copy [`TensorData`] slices that dequantize to f32
//!   ([`TensorData::to_f32`]) or convert to a [`tern_kernels::TernaryMatrix`]
//!   ([`TensorData::to_ternary`]).
//! - [`GgufWriter`] builds metadata and tensors and writes them atomically.
//! - [`GgmlType::traits`] is the codec table: per type its block and byte size, f32
//!   conversion both ways ([`quants::dequantize`], [`quants::quantize`]) and, for the ternary
//!   types, the exact [`TernaryCodec`]. Reader, writer and converter all go through it.

mod codec;
mod error;
pub mod quants;
mod reader;
mod types;
mod value;
mod writer;

pub use codec::{FromFloat, TernaryCodec, ToFloat, TypeTraits};
pub use error::GgufError;
pub use reader::{GgufFile, TensorData, TensorInfo};
pub use types::{fork_type_name, upstream_type_name, GgmlType, TypeContext};
pub use value::{GgufArray, GgufValue, ValueType};
pub use writer::{GgufWriter, MAX_TENSOR_NAME};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
