//! Packed ternary (1.58-bit) weights times int8 activations, and the dense kernels tern compares
//! them against.
//!
//! The data flow of one BitLinear layer is:
//!
//! ```text
//! f32 activations --quantize_acts--> QuantizedActs (int8, per-token scale and sum)
//! TernaryMatrix (i8 in {-1,0,1}, gamma) --PackedTernary::pack--> compute layout (tern2 / tern3)
//! ternary::matmul(packed, acts) --> f32 outputs   y = (sum x_q*q) / s * gamma
//! ```
//!
//! Every SIMD kernel has a plain scalar twin ([`ternary::matmul_reference`]) and is tested
//! bit-exactly against it. Instruction sets are chosen once at run time ([`cpu::Isa::detect`]);
//! nothing requires `-C target-cpu=native`.

pub mod actquant;
pub mod aligned;
pub mod bandwidth;
pub mod cpu;
pub mod dense;
pub mod error;
pub mod formats;
pub mod pool;
pub mod rng;
pub mod ternary;

pub use actquant::{quantize_acts, QuantizedActs};
pub use cpu::Isa;
pub use error::KernelError;
pub use formats::TernaryMatrix;
pub use pool::ThreadPool;
pub use ternary::{Layout, PackedTernary};
