use tern_kernels::KernelError;
use thiserror::Error;

/// Everything that can go wrong reading or writing a GGUF file. Every variant names the file
/// (or `gguf writer` before a path is known) and the field, key or tensor at fault, because
/// model files are untrusted input and "invalid file" alone helps nobody.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("{file}: {op}: {source}")]
    Io {
        file: String,
        op: &'static str,
        source: std::io::Error,
    },
    /// The bytes do not form a valid GGUF file (truncated, hostile count, bad offset, ...).
    #[error("{file}: {what}")]
    Format { file: String, what: String },
    /// A well-formed tensor whose type tern cannot use (or cannot tell apart, see
    /// [`crate::TypeContext`]).
    #[error("{file}: unsupported tensor type {id} ({name}) in tensor '{tensor}'{note}")]
    UnsupportedType {
        file: String,
        id: u32,
        name: String,
        tensor: String,
        note: String,
    },
    #[error("{file}: no tensor named '{name}'")]
    NoTensor { file: String, name: String },
    /// A tensor's bytes are well-sized but do not decode (e.g. a TQ2_0 tensor with per-block
    /// scales asked for as one ternary matrix).
    #[error("{file}: tensor '{tensor}': {source}")]
    Kernel {
        file: String,
        tensor: String,
        source: KernelError,
    },
    /// A request that the tensor's type or shape cannot satisfy (e.g. `to_ternary` on F32).
    #[error("{file}: tensor '{tensor}': {what}")]
    Tensor {
        file: String,
        tensor: String,
        what: String,
    },
}
