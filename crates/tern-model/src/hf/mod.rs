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

mod config;
mod weights;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::model::{Embedding, Head, Layer, Linear, Model};
use config::Family;
use safetensors::Dtype;
use std::path::Path;
use tern_kernels::dense::Int8Matrix;
use tern_kernels::formats::hf as hf_packed;
use tern_kernels::{Layout, PackedTernary, TernaryMatrix};
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

/// The LM head's storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeadKind {
    /// f16; tied checkpoints keep sharing the embedding table ([`Head::Tied`]).
    #[default]
    F16,
    /// Per-row int8 ([`Head::Int8`]): a quarter of f16's bytes, a small perplexity cost. Tied
    /// checkpoints get an int8 copy of the embedding table.
    Int8,
}

/// Choices the checkpoint does not make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Compute layout of the ternary projections.
    pub layout: Layout,
    pub head: HeadKind,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            layout: Layout::Tern2,
            head: HeadKind::F16,
        }
    }
}

/// Reads `dir/config.json` (and token ids from `dir/generation_config.json` when present):
/// the model's shape and how its projections are stored. The config is validated.
pub fn load_config(dir: &Path) -> Result<(ModelConfig, HfQuant), ModelError> {
    let parsed = config::parse(dir)?;
    Ok((parsed.config, parsed.quant))
}

/// Loads a model directory: `config.json` and `model.safetensors` (or the shards listed in
/// `model.safetensors.index.json`).
pub fn load_model(dir: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
    let parsed = config::parse(dir)?;
    let weights = Weights::open(dir)?;
    let loader = Loader {
        c: &parsed.config,
        quant: parsed.quant,
        family: parsed.family,
        layout: opts.layout,
        weights: &weights,
    };
    let c = &parsed.config;

    let embed_t = weights.get("model.embed_tokens.weight")?;
    embed_t.expect_shape(&[c.vocab_size, c.hidden_size], "vocab_size x hidden_size")?;
    let embed = if embed_t.is_f32_or_wider() {
        Embedding::F32(embed_t.to_f32()?)
    } else {
        Embedding::F16(embed_t.to_f16()?)
    };
    let norm = loader.norm("model.norm.weight", c.hidden_size, "hidden_size")?;
    let layers = loader.layers()?;

    // transformers ties whenever the config says so, ignoring any lm_head.weight in the file.
    let head_t = if c.tie_word_embeddings {
        embed_t
    } else {
        let t = weights.get("lm_head.weight")?;
        t.expect_shape(&[c.vocab_size, c.hidden_size], "vocab_size x hidden_size")?;
        t
    };
    let head = match (opts.head, c.tie_word_embeddings) {
        (HeadKind::F16, true) => Head::Tied,
        (HeadKind::F16, false) if head_t.is_f32_or_wider() => Head::F32(head_t.to_f32()?),
        (HeadKind::F16, false) => Head::F16(head_t.to_f16()?),
        (HeadKind::Int8, _) => Head::Int8(int8_head(&head_t, c.vocab_size, c.hidden_size)?),
    };

    Ok(Model {
        config: parsed.config.clone(),
        embed,
        layers,
        norm,
        head,
    })
}

/// Per-row int8 quantization from the checkpoint's own values (no detour through f16),
/// a block of rows at a time so no f32 copy of the whole table is made; rows are quantized
/// independently, so the result equals `Int8Matrix::quantize` of the whole matrix.
fn int8_head(t: &Tensor, rows: usize, cols: usize) -> Result<Int8Matrix, ModelError> {
    if cols > Int8Matrix::MAX_COLS {
        return Err(t.err(format!(
            "{cols} columns exceed the int8 head's limit of {}",
            Int8Matrix::MAX_COLS
        )));
    }
    const BLOCK_ROWS: usize = 1024;
    let row_bytes = t.data.len() / rows.max(1);
    let mut q = Vec::with_capacity(rows * cols);
    let mut scales = Vec::with_capacity(rows);
    for bytes in t.data.chunks(BLOCK_ROWS * row_bytes.max(1)) {
        let block = Tensor {
            name: t.name,
            file: t.file,
            dtype: t.dtype,
            shape: t.shape,
            data: bytes,
        };
        let n = bytes.len() / row_bytes.max(1);
        let w = match block.to_f32() {
            Ok(w) => w,
            // Redo the whole tensor so that the error's element index is relative to it.
            Err(e) => return Err(t.to_f32().err().unwrap_or(e)),
        };
        let m = Int8Matrix::quantize(&w, n, cols);
        for r in 0..n {
            q.extend_from_slice(m.row(r));
        }
        scales.extend_from_slice(&m.scales);
    }
    Ok(Int8Matrix::from_parts(rows, cols, &q, &scales))
}

/// Shared state of one load.
struct Loader<'a> {
    c: &'a ModelConfig,
    quant: HfQuant,
    family: Family,
    layout: Layout,
    weights: &'a Weights,
}

/// The ternary matrix of projection `name` (`[rows (out)][cols (in)]`) of a ternary
/// checkpoint: absmean of its float latent weights (`packed: None`, [`HfQuant::Absmean`]), or
/// its packed uint8 values with `{name}_scale` ([`HfQuant::Packed`]). Shared with `tern convert`, so a converted file holds exactly what the
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

impl Loader<'_> {
    fn layers(&self) -> Result<Vec<Layer>, ModelError> {
        crate::model::load_layers(self.c.num_layers, |i| self.layer(i))
    }

    fn layer(&self, i: usize) -> Result<Layer, ModelError> {
        let c = self.c;
        let (h, q, kv, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let p = |name: &str| format!("model.layers.{i}.{name}.weight");
        // 2B4T names first for BitNet/LLaMA, 1bitLLM names first for 1bitLLM; either is
        // accepted, since converters copy one family's layout into the other's names.
        let (attn_sub, ffn_sub) = match self.family {
            Family::OneBitLlm => (
                ["self_attn.inner_attn_ln", "self_attn.attn_sub_norm"],
                ["mlp.ffn_layernorm", "mlp.ffn_sub_norm"],
            ),
            Family::BitNet | Family::Llama => (
                ["self_attn.attn_sub_norm", "self_attn.inner_attn_ln"],
                ["mlp.ffn_sub_norm", "mlp.ffn_layernorm"],
            ),
        };
        let sub_norm =
            |names: [&str; 2], dim: usize, why: &str| -> Result<Option<Vec<f32>>, ModelError> {
                if !c.sub_norms {
                    return Ok(None);
                }
                let (first, second) = (p(names[0]), p(names[1]));
                let name = if self.weights.contains(&second) && !self.weights.contains(&first) {
                    second
                } else {
                    first
                };
                self.norm(&name, dim, why).map(Some)
            };
        Ok(Layer {
            attn_norm: self.norm(&p("input_layernorm"), h, "hidden_size")?,
            q: self.linear(&p("self_attn.q_proj"), q, h)?,
            k: self.linear(&p("self_attn.k_proj"), kv, h)?,
            v: self.linear(&p("self_attn.v_proj"), kv, h)?,
            attn_sub_norm: sub_norm(attn_sub, q, "num_attention_heads x head_dim")?,
            o: self.linear(&p("self_attn.o_proj"), h, q)?,
            ffn_norm: self.norm(&p("post_attention_layernorm"), h, "hidden_size")?,
            gate: self.linear(&p("mlp.gate_proj"), ff, h)?,
            up: self.linear(&p("mlp.up_proj"), ff, h)?,
            ffn_sub_norm: sub_norm(ffn_sub, ff, "intermediate_size")?,
            down: self.linear(&p("mlp.down_proj"), h, ff)?,
        })
    }

    fn norm(&self, name: &str, dim: usize, why: &str) -> Result<Vec<f32>, ModelError> {
        let t = self.weights.get(name)?;
        t.expect_shape(&[dim], why)?;
        t.to_f32()
    }

    /// One projection `[rows (out)][cols (in)]` in the form `self.quant` prescribes.
    fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<Linear, ModelError> {
        let packed = match self.quant {
            HfQuant::Absmean => None,
            HfQuant::Packed(convention) => Some(convention),
            HfQuant::Dense => {
                let t = self.weights.get(name)?;
                t.expect_shape(&[rows, cols], &format!("{rows}x{cols} from config.json"))?;
                return Ok(match t.dtype {
                    Dtype::F32 | Dtype::F64 => Linear::F32 {
                        w: t.to_f32()?,
                        rows,
                        cols,
                    },
                    _ => Linear::F16 {
                        w: t.to_f16()?,
                        rows,
                        cols,
                    },
                });
            }
        };
        let matrix = ternary_projection(self.weights, packed, name, rows, cols)?;
        Ok(Linear::Ternary(PackedTernary::pack(&matrix, self.layout)))
    }
}
