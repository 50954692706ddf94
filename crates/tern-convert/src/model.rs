//! The format-neutral model a conversion passes through: read from one format a layer at a
//! time, written to another. Row order is Hugging Face's (torch `[out][in]`, NeoX RoPE halves);
//! GGUF readers and writers apply llama.cpp's Q/K permutation for arch `llama` themselves.

use crate::error::ConvertError;
use half::{bf16, f16};
use tern_gguf::{quants, GgmlType};
use tern_kernels::TernaryMatrix;
use tern_model::ModelConfig;

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
    pub fn to_f32(&self) -> Result<Vec<f32>, ConvertError> {
        Ok(match &self.data {
            FloatData::F32(v) => v.clone(),
            FloatData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            FloatData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            FloatData::Gguf { ty, bytes } => quants::dequantize(*ty, bytes, self.len())
                .map_err(|what| ConvertError::tensor(&self.name, what))?,
        })
    }

    /// The values as f16: exact for F16, rounded to nearest otherwise (one pass, no f32 copy
    /// of the tensor). Values beyond f16's range are an error naming the tensor and element.
    pub fn to_f16(&self) -> Result<Vec<f16>, ConvertError> {
        let h: Vec<f16> = match &self.data {
            FloatData::F16(v) => return Ok(v.clone()),
            FloatData::F32(v) => v.iter().map(|&x| f16::from_f32(x)).collect(),
            FloatData::BF16(v) => v.iter().map(|x| f16::from_f32(x.to_f32())).collect(),
            FloatData::Gguf { .. } => self.to_f32()?.iter().map(|&x| f16::from_f32(x)).collect(),
        };
        if let Some(i) = h.iter().position(|x| !x.is_finite()) {
            let source = self.to_f32()?[i];
            return Err(ConvertError::tensor(
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

/// Everything about a model except its tensors.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub config: ModelConfig,
    /// Projections are ternary (BitNet); otherwise dense (LLaMA).
    pub ternary: bool,
    pub name: String,
    pub vocab: Option<Vocab>,
    /// Caveats found while reading (passed on in the conversion's report).
    pub notes: Vec<String>,
}

/// A model being read, one piece at a time so that a conversion never holds more than one
/// block of unpacked weights.
pub trait Source {
    fn info(&self) -> &ModelInfo;
    /// `token_embd` / `model.embed_tokens`, `[vocab][hidden]`.
    fn embed(&self) -> Result<FloatTensor, ConvertError>;
    /// The untied LM head, `[vocab][hidden]`; `None` when tied.
    fn head(&self) -> Result<Option<FloatTensor>, ConvertError>;
    fn final_norm(&self) -> Result<Vec<f32>, ConvertError>;
    fn layer(&self, i: usize) -> Result<LayerWeights, ConvertError>;
}

// The row permutations and the fake-quantized-ternary rule are the GGUF loader's own, so
// conversion and loading cannot drift apart.
pub use tern_model::gguf::{fake_quantized, permute_rows, unpermute_rows};

/// Applies `f` to the rows of a float tensor, whatever its storage (quantized GGUF data is
/// dequantized to f32 first).
pub fn map_rows(
    t: &FloatTensor,
    f: impl Fn(&[f32]) -> Vec<f32> + Copy,
    f16f: impl Fn(&[f16]) -> Vec<f16>,
    bf16f: impl Fn(&[bf16]) -> Vec<bf16>,
) -> Result<FloatTensor, ConvertError> {
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
pub fn permute_tensor(
    t: &FloatTensor,
    heads: usize,
    to_gguf: bool,
) -> Result<FloatTensor, ConvertError> {
    let (r, c) = (t.rows, t.cols);
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
