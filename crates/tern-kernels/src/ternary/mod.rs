//! (being written) tern's compute layouts and the ternary GEMV/GEMM kernels.

/// tern's compute layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Tern2,
    Tern3,
}

#[derive(Clone, Debug)]
pub struct PackedTernary;
