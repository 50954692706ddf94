use thiserror::Error;

/// Errors from packing, unpacking and shape checks. Messages name the format and the field
/// so that a caller loading a model file can prefix the file and tensor name.
#[derive(Debug, Error, PartialEq)]
pub enum KernelError {
    #[error("{format}: expected {expected} bytes for a {rows}x{cols} matrix, got {got}")]
    ByteLength {
        format: &'static str,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("{format}: {what}")]
    Shape { format: &'static str, what: String },
    #[error(
        "{format}: invalid value {value} at element {index} (ternary values must be -1, 0 or 1)"
    )]
    NotTernary {
        format: &'static str,
        index: usize,
        value: i32,
    },
    #[error("{format}: {what}")]
    Invalid { format: &'static str, what: String },
}
