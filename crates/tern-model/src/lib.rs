//! BitNet b1.58 models on CPUs: configuration, weights, the forward pass with a KV cache,
//! sampling and generation.
//!
//! The forward pass follows `bitnet-spec.md` sections 1-2 (LLaMA-style blocks with sub-norms,
//! squared-ReLU or SiLU gated FFN, GQA, rotate-half RoPE); every BitLinear runs on
//! `tern-kernels` (int8 activations x packed ternary weights), everything else in f32.

pub mod bundled;
pub mod chat;
pub mod config;
pub mod error;
pub mod forward;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod hf;
pub mod load;
pub mod model;
pub mod sample;
pub mod session;
pub mod shapes;
pub mod source;
pub mod tokenizer;

pub use config::{Activation, ModelConfig};
pub use error::ModelError;
pub use forward::{BatchLogits, BatchScratch, KvCache, KvType, SeqInput, State};
pub use model::{Embedding, Head, HeadKind, Layer, Linear, LoadOptions, Model};
pub use session::{GenParams, GenStats, ModelPath, Options, Session};
