//! tern-train: BitNet b1.58 quantization-aware training from scratch, and the full-precision
//! baseline of the same shape, on candle's autograd.
//!
//! Data flows one way: text -> [`data`] (BPE tokenizer, token shards, batches) -> [`model`]
//! (forward with BitLinear's fake quantizers from [`quant`]) -> loss -> backward ->
//! [`optim`] (AdamW with the [`schedule`]) -> [`checkpoint`] -> [`export`] (a Hugging Face
//! directory the engine and transformers load).

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod export;
pub mod ops;
pub mod optim;
pub mod quant;
pub mod recipe;
pub mod schedule;
pub mod trainer;
pub mod transformer;

pub use error::{Result, TrainError};
pub use recipe::Config;
pub use trainer::Trainer;
