//! Loading Hugging Face model directories (`config.json` + safetensors) into a [`Model`].
//!
//! Three checkpoint families share LLaMA's tensor names (`bitnet-spec.md` sections 2 and 5):
//!
//! - **BitNet b1.58 2B4T** (`BitNetForCausalLM`, `model_type: "bitnet"`): squared ReLU, GQA,
//!   SubLN `attn_sub_norm` / `ffn_sub_norm`. Its `quantization_config` says how projections are
//!   stored: `"offline"` = packed uint8 `[ceil(out/4), in]` plus `<name>_scale`
//!   (`weight_scale`), `"online"` = bf16 master weights.
//! - **1bitLLM reproductions** (`BitnetForCausalLM`, lower-case "net", `model_type: "llama"`):
//!   SiLU, SubLN named `inner_attn_ln` / `ffn_layernorm`, full-precision latent weights and no
//!   `quantization_config`, yet ternary.
//! - **LLaMA** (`LlamaForCausalLM`): dense projections (the FP16 baseline of the paper's
//!   comparisons), or ternary when a bitnet `quantization_config` says so.
//!
//! Latent float weights are ternarized once at load with the reference absmean formula
//! ([`TernaryMatrix::quantize_absmean`]), packed ones are decoded with
//! [`tern_kernels::formats::hf::unpack`]; both are then repacked into tern's compute layout.
//! Embeddings are kept as f16, norms as f32, an untied `lm_head` as f16 or int8.
//!
//! Files are memory-mapped for the duration of the load only: the returned model owns all of
//! its weights. Every tensor is checked (presence, dtype, shape, finite values) before use, so
//! a bad file is an error naming the file and tensor, never a panic.

mod config_json;
mod source;
mod weights;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::model::Model;
pub use crate::model::{HeadKind, LoadOptions};
use safetensors::Dtype;
pub use source::HfSource;
use std::path::Path;
use tern_kernels::formats::hf as hf_packed;
use tern_kernels::TernaryMatrix;
pub use weights::{Tensor, Weights};

pub const CONFIG_FILE: &str = "config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// Module names of a block's projections, relative to `model.layers.{i}`.
const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// How a checkpoint stores its transformer-block projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfQuant {
    /// Dense float projections, kept dense (`Linear::F16`, or `Linear::F32` from f32 files).
    Dense,
    /// Full-precision latent weights, ternarized at load with absmean: 2B4T's bf16 master
    /// (`quantization_mode: "online"`) and 1bitLLM checkpoints.
    Absmean,
    /// Packed uint8 ternary weights with a `weight_scale` each (`quantization_mode: "offline"`).
    Packed(ScaleConvention),
}

/// What a packed projection's `weight_scale` means (`bitnet-spec.md` 5.1): transformers'
/// two linear classes store reciprocal quantities under the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleConvention {
    /// `linear_class: "autobitlinear"`: the output is multiplied by it, so gamma = weight_scale.
    Multiplier,
    /// `linear_class: "bitlinear"` (transformers' default): the output is divided by it, so
    /// gamma = 1 / weight_scale.
    Divisor,
}

/// Reads `dir/config.json` (and token ids from `dir/generation_config.json` when present):
/// the model's shape and how its projections are stored. The config is validated.
pub fn load_config(dir: &Path) -> Result<(ModelConfig, HfQuant), ModelError> {
    let parsed = config_json::parse(dir)?;
    Ok((parsed.config, parsed.quant))
}

/// Loads a model directory: `config.json` and `model.safetensors` (or the shards listed in
/// `model.safetensors.index.json`).
pub fn load_model(dir: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
    Model::from_source(&HfSource::open(dir)?, opts)
}

/// The ternary matrix of projection `name` (`[rows (out)][cols (in)]`) of a ternary
/// checkpoint: absmean of its float latent weights (`packed: None`, [`HfQuant::Absmean`]), or
/// its packed uint8 values with `{name}_scale` ([`HfQuant::Packed`]). The one place these rules
/// live: the engine and `tern convert` both read through [`HfSource`]. Errors name the tensor
/// and what was expected.
/// engine runs. Errors name the tensor and what was expected.
pub fn ternary_projection(
    weights: &Weights,
    packed: Option<ScaleConvention>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<TernaryMatrix, ModelError> {
    let t = weights.get(name)?;
    let kernel = |e: tern_kernels::KernelError| t.err(e.to_string());
    match packed {
        None => {
            if !t.is_float() {
                return Err(t.err(format!(
                    "dtype {:?}, expected float latent weights (F32, F16, BF16){}",
                    t.dtype,
                    if t.dtype == Dtype::U8 {
                        ": packed weights need quantization_mode \"offline\""
                    } else {
                        ""
                    }
                )));
            }
            t.expect_shape(&[rows, cols], &format!("{rows}x{cols} from config.json"))?;
            TernaryMatrix::quantize_absmean(rows, cols, &t.to_f32()?).map_err(kernel)
        }
        Some(convention) => {
            if t.dtype != Dtype::U8 {
                return Err(t.err(format!(
                    "dtype {:?}, expected U8 (packed ternary, as quantization_mode \
                     \"offline\" says)",
                    t.dtype
                )));
            }
            t.expect_shape(
                &[hf_packed::packed_rows(rows), cols],
                &format!("{rows}x{cols} packed 4 rows per byte"),
            )?;
            let scale_name = format!("{name}_scale");
            let s = weights.get(&scale_name)?;
            let scale = s.scalar()?;
            if scale <= 0.0 {
                return Err(s.err(format!("{scale} is not a positive scale")));
            }
            let gamma = match convention {
                ScaleConvention::Multiplier => scale,
                ScaleConvention::Divisor => 1.0 / scale,
            };
            hf_packed::unpack(t.data, rows, cols, gamma).map_err(kernel)
        }
    }
}
