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
//! Every SIMD kernel has a plain scalar twin ([`ternary::matmul_reference`],
//! [`norm::rms_norm_reference`], [`rope::rope_reference`], [`attention::attend_reference`], ...)
//! and a `_with(.., isa)` entry, and is tested against it on every instruction set the machine
//! has: bit-exactly where the kernel is exact by design (ternary, int8, activation
//! quantization, RMSNorm, RoPE, attention), to the f32 rounding bound for the dense f32 / f16
//! products, which sum in another order. Instruction sets are chosen once at run time ([`cpu::Isa::detect`]);
//! nothing requires `-C target-cpu=native`.

pub mod actquant;
pub mod aligned;
pub mod attention;
pub mod bandwidth;
pub mod cpu;
pub mod dense;
pub mod error;
pub mod formats;
pub mod norm;
pub mod pool;
pub mod rng;
pub mod rope;
pub mod ternary;

pub use actquant::{quantize_acts, QuantizedActs};
pub use cpu::Isa;
pub use error::KernelError;
pub use formats::TernaryMatrix;
pub use pool::ThreadPool;
pub use ternary::{Layout, PackedTernary};
