//! One reader per file format: a Hugging Face directory ([`crate::hf::HfSource`]) or a GGUF
//! file ([`crate::gguf::GgufSource`]) read into one format-neutral description of a model
//! ([`Source`]: config, text interface, tensors by role, ternary projections with their
//! scales). The engine builds a runnable [`crate::Model`] from it
//! ([`crate::Model::from_source`]) and `tern convert` writes it to another format, so a
//! checkpoint form or model family is taught to tern once.
//!
//! A source is read one piece at a time (a block of layers at most), so neither a load nor a
//! conversion holds more than a block of unpacked weights besides its output. Row order is
//! Hugging Face's (torch `[out][in]`, NeoX RoPE halves); the GGUF reader undoes llama.cpp's
//! Q/K permutation for arch `llama`, and the GGUF writer applies it.

pub mod synthetic;
pub mod vocab;

use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::tokenizer::Tokenizer;
use half::{bf16, f16};
use std::path::Path;
use tern_gguf::{quants, GgmlType};
use tern_kernels::TernaryMatrix;

/// `tensor NAME: WHAT` (a tensor of a source already known to the caller by file).
fn tensor_err(name: &str, what: impl Into<String>) -> ModelError {
    ModelError::Other(format!("tensor {name}: {}", what.into()))
}

/// Float values in the storage they came in, so that a conversion keeps them exactly when the
/// target can hold that storage.
#[derive(Clone, Debug)]
pub enum FloatData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    /// A GGUF tensor of another type (Q8_0, Q6_K, ...), its bytes as they were.
    Gguf {
        ty: GgmlType,
        bytes: Vec<u8>,
    },
}

/// A `rows x cols` float matrix (`[out][in]`), or a vector with `rows == 1`.
#[derive(Clone, Debug)]
pub struct FloatTensor {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub data: FloatData,
}

impl FloatTensor {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32 (exact for every storage but the GGUF quantized types, which are
    /// dequantized as ggml does).
    pub fn to_f32(&self) -> Result<Vec<f32>, ModelError> {
        Ok(match &self.data {
            FloatData::F32(v) => v.clone(),
            FloatData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            FloatData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            FloatData::Gguf { ty, bytes } => quants::dequantize(*ty, bytes, self.len())
                .map_err(|what| tensor_err(&self.name, what))?,
        })
    }

    /// Rows `r0 .. r0 + n` as f32 (a block of a large table, without converting the rest).
    pub fn rows_to_f32(&self, r0: usize, n: usize) -> Result<Vec<f32>, ModelError> {
        let (a, b) = (r0 * self.cols, (r0 + n) * self.cols);
        Ok(match &self.data {
            FloatData::F32(v) => v[a..b].to_vec(),
            FloatData::F16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
            FloatData::BF16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
            FloatData::Gguf { ty, bytes } => {
                let row_bytes = bytes.len() / self.rows.max(1);
                quants::dequantize(*ty, &bytes[r0 * row_bytes..(r0 + n) * row_bytes], b - a)
                    .map_err(|what| tensor_err(&self.name, what))?
            }
        })
    }

    /// The values as f16: exact for F16, rounded to nearest otherwise (one pass, no f32 copy
    /// of the tensor). Values beyond f16's range are an error naming the tensor and element.
    /// [`Self::to_f32`], moving the storage out when it is f32 already (no copy).
    pub fn into_f32(self) -> Result<Vec<f32>, ModelError> {
        match self.data {
            FloatData::F32(v) => Ok(v),
            _ => self.to_f32(),
        }
    }

    /// [`Self::to_f16`], moving the storage out when it is f16 already (no copy).
    pub fn into_f16(self) -> Result<Vec<f16>, ModelError> {
        match self.data {
            FloatData::F16(v) => Ok(v),
            _ => self.to_f16(),
        }
    }

    pub fn to_f16(&self) -> Result<Vec<f16>, ModelError> {
        let h: Vec<f16> = match &self.data {
            FloatData::F16(v) => return Ok(v.clone()),
            FloatData::F32(v) => v.iter().map(|&x| f16::from_f32(x)).collect(),
            FloatData::BF16(v) => v.iter().map(|x| f16::from_f32(x.to_f32())).collect(),
            FloatData::Gguf { .. } => self.to_f32()?.iter().map(|&x| f16::from_f32(x)).collect(),
        };
        if let Some(i) = h.iter().position(|x| !x.is_finite()) {
            let source = self.to_f32()?[i];
            return Err(tensor_err(
                &self.name,
                format!("element {i} = {source} does not fit in f16 (|x| > 65504)"),
            ));
        }
        Ok(h)
    }

    /// Whether f32 storage is needed to keep the values exactly.
    pub fn is_f32(&self) -> bool {
        matches!(self.data, FloatData::F32(_))
    }

    pub fn is_f16(&self) -> bool {
        matches!(self.data, FloatData::F16(_))
    }
}

/// One transformer-block projection.
#[derive(Clone, Debug)]
pub enum Proj {
    Ternary(TernaryMatrix),
    Dense(FloatTensor),
}

/// Projection slots in a block, in the order of [`PROJ_NAMES`].
pub const N_PROJ: usize = 7;

/// (HF module relative to `model.layers.N`, GGUF base name relative to `blk.N`).
pub const PROJ_NAMES: [(&str, &str); N_PROJ] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// `[rows (out), cols (in)]` of each projection.
pub fn proj_shapes(c: &ModelConfig) -> [(usize, usize); N_PROJ] {
    let (h, q, kv, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    [(q, h), (kv, h), (kv, h), (h, q), (ff, h), (ff, h), (h, ff)]
}

/// One transformer block.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub attn_sub_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub ffn_sub_norm: Option<Vec<f32>>,
    pub projs: [Proj; N_PROJ],
}

/// A byte-level BPE vocabulary in GGUF terms (`tokenizer.ggml.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Vocab {
    /// Token strings by id, in byte-level form.
    pub tokens: Vec<String>,
    /// llama.cpp token types: 1 normal, 3 control, 4 user-defined, 5 unused.
    pub types: Vec<i32>,
    /// `"a b"` merges in rank order.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.pre`: `llama-bpe` or `gpt-2`.
    pub pre: String,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;

/// Everything about a model except its tensors and its text interface.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub config: ModelConfig,
    /// Projections are ternary (BitNet); otherwise dense (LLaMA).
    pub ternary: bool,
    pub name: String,
    /// `hf` or `gguf`.
    pub format: &'static str,
    /// The GGUF architecture, for GGUF sources.
    pub arch: Option<String>,
}

/// What turns text into a model's tokens and back, as the checkpoint describes it.
pub struct TextInterface {
    pub tokenizer: Option<Tokenizer>,
    /// Why the checkpoint's tokenizer could not be built (an unsupported GGUF
    /// `tokenizer.ggml.model` or `pre`, or broken metadata); the model still takes token ids.
    pub tokenizer_error: Option<String>,
    /// Where the tokenizer came from, for `tern info`.
    pub tokenizer_origin: &'static str,
    /// The checkpoint's own template, or `None` when it ships none (or, for bitnet.cpp's 2B4T
    /// files, ships one the model was not tuned with).
    pub chat_template: Option<ChatTemplate>,
    pub chat_template_origin: &'static str,
    /// Tokens that end generation: the config's EOS ids plus end-of-turn tokens in the vocab.
    pub stop_tokens: Vec<u32>,
}

/// A model being read, one piece at a time. `Sync`, so that blocks load on several threads.
pub trait Source: Sync {
    fn info(&self) -> &ModelInfo;
    /// The tokenizer, chat template and stop tokens the engine runs with.
    fn text(&self) -> Result<TextInterface, ModelError>;
    /// The tokenizer as a GGUF vocabulary (for conversion); `None` when the model ships
    /// none. Caveats go to `notes`.
    fn vocab(&self, notes: &mut Vec<String>) -> Result<Option<Vocab>, ModelError>;
    /// `token_embd` / `model.embed_tokens`, `[vocab][hidden]`.
    fn embed(&self) -> Result<FloatTensor, ModelError>;
    /// The untied LM head, `[vocab][hidden]`; `None` when tied.
    fn head(&self) -> Result<Option<FloatTensor>, ModelError>;
    fn final_norm(&self) -> Result<Vec<f32>, ModelError>;
    fn layer(&self, i: usize) -> Result<LayerWeights, ModelError>;
}

pub use crate::gguf::{fake_quantized, permute_rows, unpermute_rows};

/// Opens a model for reading: a Hugging Face directory (`config.json`, `*.safetensors`) or a
/// GGUF file (`.gguf` or the GGUF magic). Errors say what `path` is and what was expected.
pub fn open(path: &Path) -> Result<Box<dyn Source>, ModelError> {
    if !path.exists() {
        return Err(ModelError::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    if crate::gguf::is_gguf(path) {
        return Ok(Box::new(crate::gguf::GgufSource::open(path)?));
    }
    if path.is_dir() {
        return Ok(Box::new(crate::hf::HfSource::open(path)?));
    }
    Err(ModelError::Other(format!(
        "{}: not a model (expected a Hugging Face directory with config.json or a .gguf file)",
        path.display()
    )))
}

/// Applies `f` to the rows of a float tensor, whatever its storage (quantized GGUF data is
/// dequantized to f32 first).
pub fn map_rows(
    t: &FloatTensor,
    f: impl Fn(&[f32]) -> Vec<f32> + Copy,
    f16f: impl Fn(&[f16]) -> Vec<f16>,
    bf16f: impl Fn(&[bf16]) -> Vec<bf16>,
) -> Result<FloatTensor, ModelError> {
    let data = match &t.data {
        FloatData::F32(v) => FloatData::F32(f(v)),
        FloatData::F16(v) => FloatData::F16(f16f(v)),
        FloatData::BF16(v) => FloatData::BF16(bf16f(v)),
        FloatData::Gguf { .. } => FloatData::F32(f(&t.to_f32()?)),
    };
    Ok(FloatTensor {
        name: t.name.clone(),
        rows: t.rows,
        cols: t.cols,
        data,
    })
}

/// Q/K of a dense LLaMA permuted (`to_gguf`) or un-permuted for llama.cpp's RoPE order.
/// Quantized GGUF storage is permuted row by row as bytes (each row is whole blocks), so it
/// keeps its type and its exact values.
pub fn permute_tensor(
    t: &FloatTensor,
    heads: usize,
    to_gguf: bool,
) -> Result<FloatTensor, ModelError> {
    let (r, c) = (t.rows, t.cols);
    if let FloatData::Gguf { ty, bytes } = &t.data {
        let row_bytes = bytes.len() / r.max(1);
        let bytes = if to_gguf {
            permute_rows(bytes, r, row_bytes, heads)
        } else {
            unpermute_rows(bytes.clone(), r, row_bytes, heads)
        };
        return Ok(FloatTensor {
            name: t.name.clone(),
            rows: r,
            cols: c,
            data: FloatData::Gguf { ty: *ty, bytes },
        });
    }
    if to_gguf {
        map_rows(
            t,
            |v| permute_rows(v, r, c, heads),
            |v| permute_rows(v, r, c, heads),
            |v| permute_rows(v, r, c, heads),
        )
    } else {
        map_rows(
            t,
            |v| unpermute_rows(v.to_vec(), r, c, heads),
            |v| unpermute_rows(v.to_vec(), r, c, heads),
            |v| unpermute_rows(v.to_vec(), r, c, heads),
        )
    }
}
