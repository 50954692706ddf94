//! Loading GGUF model files (llama.cpp / bitnet.cpp) into a [`Model`] (`bitnet-spec.md` 5.3).
//!
//! Architectures (`general.architecture`): `bitnet-b1.58` and `bitnet-25` (bitnet.cpp's fork,
//! squared ReLU), `bitnet` (1bitLLM, SiLU unless a `hidden_activation` / `hidden_act` key says
//! `relu2`: upstream's converter writes 2B4T as `bitnet` with that key) and `llama` (SiLU; dense
//! or ternary projections). The spec's rule is "the arch decides the activation", because the
//! official 2B4T GGUF carries no activation key.
//!
//! How tensors become weights:
//! - projections stored as TQ1_0 / TQ2_0 / I2_S are decoded with one scale per tensor
//!   (`TensorData::to_ternary`, which rejects TQ tensors whose blocks disagree on the scale)
//!   and repacked into tern's compute layout. TQ scales are f16, so gamma comes back rounded
//!   to f16; I2_S keeps its f32 scale exactly. Optional `blk.N.<proj>.scale` tensors (one
//!   value, llama.cpp multiplies the matmul output by it) are folded into gamma;
//! - float projections (F32 / F16 / BF16, or dequantized Q-types) are **dense** under `llama`
//!   (the FP baseline). Under a bitnet arch they are ternarized: upstream's converter writes
//!   already fake-quantized values `q * s`, which are recovered exactly (gamma = s, not
//!   mean|W|, which would shrink the weights by the fraction of zeros); any other float weights
//!   are latent weights and get absmean, like the HF loader's online mode;
//! - the embedding table and an untied `output.weight` stay F32 when stored as F32; every other
//!   type (F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K) is dequantized and **widened to f16** at load, so
//!   a quantized table costs f16 memory here. `HeadKind::Int8` quantizes the head per row;
//! - norms are f32; tensors the model does not use are ignored.
//!
//! - under `llama`, `attn_q` / `attn_k` rows are un-permuted: llama.cpp's LLaMA converter
//!   reorders each head's rows for its adjacent-pair ("normal") RoPE, while tern (like HF)
//!   rotates halves (NeoX). The bitnet archs use NeoX RoPE in llama.cpp and are not permuted
//!   (`bitnet-spec.md` 2.4).
//!
//! GGUF dims are ggml order (ne0 = in_features first): a torch `[out, in]` matrix has dims
//! `[in, out]`. Every tensor is checked against the metadata before use; errors name the file
//! and the key or tensor.

use crate::chat::ChatTemplate;
use crate::config::{Activation, ModelConfig};
use crate::error::ModelError;
use crate::gguf_tokenizer::tokenizer_from_gguf;
use crate::model::{LoadOptions, Model};
use crate::source::{
    permute_tensor, proj_shapes, vocab, FloatData, FloatTensor, LayerWeights, ModelInfo, Proj,
    Source, TextInterface, Vocab, N_PROJ, PROJ_NAMES,
};
use crate::tokenizer::Tokenizer;
use half::{bf16, f16};
use std::path::Path;
use tern_gguf::{GgmlType, GgufError, GgufFile, GgufValue, TensorData};
use tern_kernels::TernaryMatrix;

/// Architectures this loader understands.
const ARCHS: [&str; 4] = ["bitnet-b1.58", "bitnet-25", "bitnet", "llama"];

/// True when `path` is a GGUF file: a `.gguf` extension or the `GGUF` magic.
pub fn is_gguf(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|_| &magic == tern_gguf::GGUF_MAGIC)
}

fn gguf_err(e: GgufError) -> ModelError {
    // GgufError messages already name the file and the tensor or field.
    ModelError::Other(e.to_string())
}

/// Reads the model's shape from a GGUF file's metadata (and which tensors exist: sub-norms,
/// tied head). The config is validated.
pub fn load_config(path: &Path) -> Result<ModelConfig, ModelError> {
    let f = open(path)?;
    Meta::new(&f, path).config()
}

/// Loads a GGUF model file.
pub fn load_model(path: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
    Model::from_source(&GgufSource::open(path)?, opts)
}

/// Opens (memory-maps and parses) a GGUF file, with tern's error type.
pub fn open(path: &Path) -> Result<GgufFile, ModelError> {
    GgufFile::open(path).map_err(gguf_err)
}

/// The metadata keys and tensor names tern reads and writes (llama.cpp's), one table for this
/// reader and `tern convert`'s writer. Per-architecture keys are `{arch}.{suffix}`
/// ([`keys::arch`]); block tensors are `blk.{i}.{name}`, projections named in
/// [`crate::source::PROJ_NAMES`].
pub mod keys {
    pub const ARCHITECTURE: &str = "general.architecture";
    pub const NAME: &str = "general.name";
    pub const FILE_TYPE: &str = "general.file_type";
    pub const QUANTIZATION_VERSION: &str = "general.quantization_version";

    pub const VOCAB_SIZE: &str = "vocab_size";
    pub const CONTEXT_LENGTH: &str = "context_length";
    pub const EMBEDDING_LENGTH: &str = "embedding_length";
    pub const BLOCK_COUNT: &str = "block_count";
    pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
    pub const HEAD_COUNT: &str = "attention.head_count";
    pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
    pub const ROPE_DIMENSION_COUNT: &str = "rope.dimension_count";
    pub const RMS_EPS: &str = "attention.layer_norm_rms_epsilon";
    pub const ROPE_FREQ_BASE: &str = "rope.freq_base";
    /// The activation where the architecture does not imply it (`relu2` or `silu`); the
    /// first is what upstream's converter writes, the second is read too.
    pub const HIDDEN_ACTIVATION: &str = "hidden_activation";
    pub const HIDDEN_ACT: &str = "hidden_act";

    pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
    pub const TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

    pub const TOKEN_EMBD: &str = "token_embd.weight";
    pub const OUTPUT: &str = "output.weight";
    pub const OUTPUT_NORM: &str = "output_norm.weight";
    pub const ATTN_NORM: &str = "attn_norm.weight";
    pub const ATTN_SUB_NORM: &str = "attn_sub_norm.weight";
    pub const FFN_NORM: &str = "ffn_norm.weight";
    pub const FFN_SUB_NORM: &str = "ffn_sub_norm.weight";

    /// `{arch}.{suffix}`.
    pub fn arch(arch: &str, suffix: &str) -> String {
        format!("{arch}.{suffix}")
    }
}

/// Metadata access with errors that name the file and key.
struct Meta<'a> {
    f: &'a GgufFile,
    file: String,
}

impl<'a> Meta<'a> {
    fn new(f: &'a GgufFile, path: &Path) -> Self {
        Meta {
            f,
            file: path.display().to_string(),
        }
    }

    fn err(&self, what: String) -> ModelError {
        ModelError::Config {
            file: self.file.clone(),
            what,
        }
    }

    fn arch(&self) -> Result<&'a str, ModelError> {
        let a = self
            .f
            .get(keys::ARCHITECTURE)
            .ok_or_else(|| self.err(format!("missing metadata key '{}'", keys::ARCHITECTURE)))?
            .as_str()
            .ok_or_else(|| {
                self.err(format!(
                    "metadata key '{}' is not a string",
                    keys::ARCHITECTURE
                ))
            })?;
        if !ARCHS.contains(&a) {
            return Err(self.err(format!(
                "general.architecture '{a}' is not supported (expected one of {})",
                ARCHS.join(", ")
            )));
        }
        Ok(a)
    }

    fn uint(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.f.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.err(format!(
                        "metadata key '{key}' is {v:?}, expected a non-negative integer"
                    ))
                }),
        }
    }

    fn req_uint(&self, key: &str) -> Result<usize, ModelError> {
        self.uint(key)?
            .ok_or_else(|| self.err(format!("missing metadata key '{key}'")))
    }

    fn float(&self, key: &str) -> Result<Option<f32>, ModelError> {
        match self.f.get(key) {
            None => Ok(None),
            Some(v) => v.as_f32().map(Some).ok_or_else(|| {
                self.err(format!("metadata key '{key}' is {v:?}, expected a float"))
            }),
        }
    }

    fn token_id(&self, key: &str) -> Result<Option<u32>, ModelError> {
        self.uint(key)?
            .map(|v| {
                u32::try_from(v)
                    .map_err(|_| self.err(format!("metadata key '{key}' is {v}, too large")))
            })
            .transpose()
    }

    fn activation(&self, a: &str) -> Result<Activation, ModelError> {
        for key in [keys::HIDDEN_ACTIVATION, keys::HIDDEN_ACT].map(|k| keys::arch(a, k)) {
            if let Some(v) = self.f.get(&key) {
                let s = v
                    .as_str()
                    .ok_or_else(|| self.err(format!("metadata key '{key}' is not a string")))?;
                return match s.to_ascii_lowercase().as_str() {
                    "relu2" | "relu_sqr" | "relu_squared" | "squared_relu" => Ok(Activation::Relu2),
                    "silu" | "swish" => Ok(Activation::Silu),
                    other => Err(self.err(format!(
                        "metadata key '{key}' = '{other}': unsupported activation (relu2 or silu)"
                    ))),
                };
            }
        }
        Ok(match a {
            "bitnet-b1.58" | "bitnet-25" => Activation::Relu2,
            _ => Activation::Silu,
        })
    }

    fn config(&self) -> Result<ModelConfig, ModelError> {
        let a = self.arch()?;
        let k = |s: &str| keys::arch(a, s);
        let hidden = self.req_uint(&k(keys::EMBEDDING_LENGTH))?;
        let heads = self.req_uint(&k(keys::HEAD_COUNT))?;
        let kv_heads = self.uint(&k(keys::HEAD_COUNT_KV))?.unwrap_or(heads);
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(self.err(format!(
                "{} ({hidden}) is not a multiple of {} ({heads})",
                k(keys::EMBEDDING_LENGTH),
                k(keys::HEAD_COUNT)
            )));
        }
        let head_dim = hidden / heads;
        if let Some(rot) = self.uint(&k(keys::ROPE_DIMENSION_COUNT))? {
            if rot != head_dim {
                return Err(self.err(format!(
                    "{} is {rot} but the head dimension is {head_dim}: partial rotary \
                     embeddings are not supported",
                    k(keys::ROPE_DIMENSION_COUNT)
                )));
            }
        }
        let vocab = match self.uint(&k(keys::VOCAB_SIZE))? {
            Some(v) => v,
            None => match self.f.get(keys::TOKENS).and_then(GgufValue::as_array) {
                Some(t) => t.len(),
                // Last resort: the embedding table's row count (ne1).
                None => self
                    .f
                    .tensor_info(keys::TOKEN_EMBD)
                    .and_then(|t| t.dims.get(1).copied())
                    .ok_or_else(|| {
                        self.err(format!(
                            "no '{}', no 'tokenizer.ggml.tokens' and no 'token_embd.weight' \
                             to tell the vocabulary size",
                            k(keys::VOCAB_SIZE)
                        ))
                    })?,
            },
        };
        let eos = self.token_id(keys::EOS_ID)?;
        let eot = self.token_id(keys::EOT_ID)?;
        let mut eos_token_ids: Vec<u32> = eos.into_iter().collect();
        if let Some(t) = eot.filter(|t| !eos_token_ids.contains(t)) {
            eos_token_ids.push(t);
        }
        let config = ModelConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.req_uint(&k(keys::FEED_FORWARD_LENGTH))?,
            num_layers: self.req_uint(&k(keys::BLOCK_COUNT))?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            max_seq_len: self.req_uint(&k(keys::CONTEXT_LENGTH))?,
            rms_norm_eps: self
                .float(&k(keys::RMS_EPS))?
                .ok_or_else(|| self.err(format!("missing metadata key '{}'", k(keys::RMS_EPS))))?,
            rope_theta: self.float(&k(keys::ROPE_FREQ_BASE))?.unwrap_or(10000.0),
            activation: self.activation(a)?,
            sub_norms: self
                .f
                .tensor_info(&format!("blk.0.{}", keys::ATTN_SUB_NORM))
                .is_some(),
            tie_word_embeddings: self.f.tensor_info(keys::OUTPUT).is_none(),
            bos_token_id: self.token_id(keys::BOS_ID)?,
            eos_token_ids,
        };
        config.validate().map_err(|e| self.err(e))?;
        Ok(config)
    }
}

/// The GGUF file reader, as a [`Source`].
pub struct GgufSource {
    f: GgufFile,
    file: String,
    info: ModelInfo,
    /// Float projections are latent or fake-quantized ternary weights (bitnet archs) rather
    /// than dense ones (llama).
    float_is_ternary: bool,
    /// Q/K rows are in llama.cpp's permuted RoPE order (arch `llama`).
    permuted_qk: bool,
}

impl GgufSource {
    pub fn open(path: &Path) -> Result<GgufSource, ModelError> {
        let f = open(path)?;
        let meta = Meta::new(&f, path);
        let config = meta.config()?;
        let arch = meta.arch()?.to_string();
        let float_is_ternary = arch != "llama";
        let proj_ternary = f
            .tensor_info("blk.0.attn_q.weight")
            .is_some_and(|t| t.ty.is_ternary());
        let name = f
            .get(keys::NAME)
            .and_then(GgufValue::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into())
            });
        Ok(GgufSource {
            file: path.display().to_string(),
            info: ModelInfo {
                config,
                ternary: float_is_ternary || proj_ternary,
                name,
                format: "gguf",
                arch: Some(arch.clone()),
            },
            permuted_qk: arch == "llama",
            float_is_ternary,
            f,
        })
    }

    /// The parsed file (metadata and tensor directory).
    pub fn file(&self) -> &GgufFile {
        &self.f
    }

    fn terr(&self, tensor: &str, what: impl Into<String>) -> ModelError {
        ModelError::Tensor {
            file: self.file.clone(),
            tensor: tensor.to_string(),
            what: what.into(),
        }
    }

    /// Tensor `name`, which must have ggml dims `dims`.
    fn tensor(&self, name: &str, dims: &[usize]) -> Result<TensorData<'_>, ModelError> {
        let t = self.f.tensor(name).map_err(|e| match e {
            GgufError::NoTensor { .. } => self.terr(name, "missing"),
            e => gguf_err(e),
        })?;
        if t.dims != dims {
            return Err(self.terr(
                name,
                format!(
                    "dims {:?} (ggml order, ne0 first), expected {dims:?} from the metadata",
                    t.dims
                ),
            ));
        }
        Ok(t)
    }

    fn f32s(&self, t: &TensorData) -> Result<Vec<f32>, ModelError> {
        let v = t.to_f32().map_err(gguf_err)?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(self.terr(t.name, format!("element {i} is {}", v[i])));
        }
        Ok(v)
    }

    /// A float tensor in its own storage (F32, F16, BF16, or another type's bytes as they
    /// are), with non-finite values rejected.
    fn float_tensor(
        &self,
        t: &TensorData,
        rows: usize,
        cols: usize,
    ) -> Result<FloatTensor, ModelError> {
        let halves = || t.bytes.chunks_exact(2).map(|b| [b[0], b[1]]);
        // F16 and BF16 are checked in their own type: no f32 copy of a large table (the
        // embedding of a 128K vocabulary: 1.3 GB) just to look at it.
        let data = match t.ty {
            GgmlType::F32 => FloatData::F32(self.f32s(t)?),
            GgmlType::F16 => {
                let h: Vec<f16> = halves().map(f16::from_le_bytes).collect();
                if let Some(i) = h.iter().position(|x| !x.is_finite()) {
                    return Err(self.terr(t.name, format!("element {i} is {}", h[i].to_f32())));
                }
                FloatData::F16(h)
            }
            GgmlType::BF16 => {
                let h: Vec<bf16> = halves().map(bf16::from_le_bytes).collect();
                if let Some(i) = h.iter().position(|x| !x.is_finite()) {
                    return Err(self.terr(t.name, format!("element {i} is {}", h[i].to_f32())));
                }
                FloatData::BF16(h)
            }
            ty if ty.is_ternary() => FloatData::F32(self.f32s(t)?),
            ty => {
                self.f32s(t)?;
                FloatData::Gguf {
                    ty,
                    bytes: t.bytes.to_vec(),
                }
            }
        };
        Ok(FloatTensor {
            name: t.name.to_string(),
            rows,
            cols,
            data,
        })
    }

    fn norm(&self, name: &str, dim: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.tensor(name, &[dim])?;
        self.f32s(&t)
    }

    /// The optional `<base>.scale` tensor: one value multiplied into the projection's output.
    fn scale(&self, base: &str) -> Result<Option<f32>, ModelError> {
        let name = format!("{base}.scale");
        if self.f.tensor_info(&name).is_none() {
            return Ok(None);
        }
        let t = self.f.tensor(&name).map_err(gguf_err)?;
        if t.n_elements() != 1 {
            return Err(self.terr(&name, format!("dims {:?}, expected a single value", t.dims)));
        }
        Ok(Some(self.f32s(&t)?[0]))
    }

    /// Projection `<base>.weight`, torch `[rows (out)][cols (in)]`, ggml dims `[cols, rows]`.
    /// `rope_heads` > 0 marks Q or K with that many heads: rows are un-permuted under `llama`.
    fn proj(
        &self,
        base: &str,
        rows: usize,
        cols: usize,
        rope_heads: usize,
    ) -> Result<Proj, ModelError> {
        let name = format!("{base}.weight");
        let t = self.tensor(&name, &[cols, rows])?;
        let scale = self.scale(base)?;
        let heads = if self.permuted_qk { rope_heads } else { 0 };
        let mut m = if t.ty.is_ternary() {
            t.to_ternary().map_err(gguf_err)?
        } else if self.float_is_ternary {
            let w = self.f32s(&t)?;
            match fake_quantized(rows, cols, &w) {
                Some(m) => m,
                None => TernaryMatrix::quantize_absmean(rows, cols, &w)
                    .map_err(|e| self.terr(&name, e.to_string()))?,
            }
        } else {
            if scale.is_some() {
                return Err(self.terr(
                    &format!("{base}.scale"),
                    "a scale on a dense projection is not supported",
                ));
            }
            let ft = self.float_tensor(&t, rows, cols)?;
            return Ok(Proj::Dense(if heads > 0 {
                permute_tensor(&ft, heads, false)?
            } else {
                ft
            }));
        };
        m.values = unpermute_rows(std::mem::take(&mut m.values), rows, cols, heads);
        if let Some(s) = scale {
            m.gamma *= s;
        }
        if !m.gamma.is_finite() {
            return Err(self.terr(&name, format!("scale {} is not finite", m.gamma)));
        }
        Ok(Proj::Ternary(m))
    }
}

impl Source for GgufSource {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// A tokenizer built from `tokenizer.ggml.*` (SentencePiece `llama` or byte-level BPE
    /// `gpt2`, see [`crate::gguf_tokenizer`]); when that fails the model loads without one,
    /// the reason in `tokenizer_error`. Stop tokens are the EOS and EOT ids of the metadata
    /// plus end-of-turn tokens.
    fn text(&self) -> Result<TextInterface, ModelError> {
        let c = &self.info.config;
        let (tokenizer, tokenizer_error) = match tokenizer_from_gguf(&self.f) {
            Ok(t) => (t, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let stop_tokens = match &tokenizer {
            Some(t) => t.stop_tokens(&c.eos_token_ids),
            None => c.eos_token_ids.clone(),
        };
        let chat_template = chat_template(&self.f, tokenizer.as_ref(), c, &self.file)?;
        Ok(TextInterface {
            tokenizer,
            tokenizer_error,
            tokenizer_origin: "tokenizer.ggml.* (GGUF metadata)",
            chat_template,
            chat_template_origin: "tokenizer.chat_template (GGUF metadata)",
            stop_tokens,
        })
    }

    fn vocab(&self, _notes: &mut Vec<String>) -> Result<Option<Vocab>, ModelError> {
        vocab::from_gguf(&self.f)
    }

    fn embed(&self) -> Result<FloatTensor, ModelError> {
        let c = &self.info.config;
        let t = self.tensor(keys::TOKEN_EMBD, &[c.hidden_size, c.vocab_size])?;
        let r = self.float_tensor(&t, c.vocab_size, c.hidden_size);
        // Copied: the file's pages need not stay resident beside the copy.
        self.f.release(keys::TOKEN_EMBD);
        r
    }

    fn head(&self) -> Result<Option<FloatTensor>, ModelError> {
        let c = &self.info.config;
        if c.tie_word_embeddings {
            return Ok(None);
        }
        let t = self.tensor(keys::OUTPUT, &[c.hidden_size, c.vocab_size])?;
        let r = self.float_tensor(&t, c.vocab_size, c.hidden_size).map(Some);
        self.f.release(keys::OUTPUT);
        r
    }

    fn final_norm(&self) -> Result<Vec<f32>, ModelError> {
        self.norm(keys::OUTPUT_NORM, self.info.config.hidden_size)
    }

    fn layer(&self, i: usize) -> Result<LayerWeights, ModelError> {
        let c = &self.info.config;
        let p = |name: &str| format!("blk.{i}.{name}");
        let shapes = proj_shapes(c);
        let mut projs = Vec::with_capacity(N_PROJ);
        for (k, ((_, base), (rows, cols))) in PROJ_NAMES.iter().zip(shapes).enumerate() {
            let rope_heads = match k {
                0 => c.num_heads,
                1 => c.num_kv_heads,
                _ => 0,
            };
            projs.push(self.proj(&p(base), rows, cols, rope_heads)?);
        }
        let projs: [Proj; N_PROJ] = projs
            .try_into()
            .map_err(|_| ModelError::Other("projection count".into()))?;
        let sub = |name: &str, dim: usize| -> Result<Option<Vec<f32>>, ModelError> {
            c.sub_norms.then(|| self.norm(&p(name), dim)).transpose()
        };
        let layer = Ok(LayerWeights {
            attn_norm: self.norm(&p(keys::ATTN_NORM), c.hidden_size)?,
            attn_sub_norm: sub(keys::ATTN_SUB_NORM, c.q_dim())?,
            ffn_norm: self.norm(&p(keys::FFN_NORM), c.hidden_size)?,
            ffn_sub_norm: sub(keys::FFN_SUB_NORM, c.intermediate_size)?,
            projs,
        });
        // The layer is copied (unpacked): let its file pages go, so that a load's peak
        // memory is the model plus one layer, not the model plus the file.
        let prefix = format!("blk.{i}.");
        for t in self
            .f
            .tensors()
            .iter()
            .filter(|t| t.name.starts_with(&prefix))
        {
            self.f.release(&t.name);
        }
        layer
    }
}

/// `tokenizer.chat_template` of a GGUF file, as llama.cpp uses it, except in bitnet.cpp's
/// 2B4T files (`bitnet-b1.58`, `bitnet-25`): their embedded template is not the one the model
/// was tuned with (bitnet-spec.md section 6), so those get the built-in 2B4T template.
fn chat_template(
    f: &GgufFile,
    tokenizer: Option<&Tokenizer>,
    c: &ModelConfig,
    file: &str,
) -> Result<Option<ChatTemplate>, ModelError> {
    if matches!(f.architecture(), Some("bitnet-b1.58" | "bitnet-25")) {
        return Ok(None);
    }
    let Some(text) = f.get(keys::CHAT_TEMPLATE).and_then(GgufValue::as_str) else {
        return Ok(None);
    };
    let name = |id: Option<u32>| {
        id.and_then(|i| tokenizer.and_then(|t| t.id_to_token(i)))
            .unwrap_or_default()
    };
    let bos = name(c.bos_token_id);
    let eos = name(c.eos_token_ids.first().copied());
    ChatTemplate::from_jinja(format!("{file} (tokenizer.chat_template)"), text, bos, eos).map(Some)
}

/// `w` as an exact ternary matrix when every nonzero value has the same magnitude `s` (what
/// upstream's converter writes for bitnet: `round(w / s).clamp(-1, 1) * s`), with gamma = s.
pub fn fake_quantized(rows: usize, cols: usize, w: &[f32]) -> Option<TernaryMatrix> {
    let s = w.iter().find(|x| **x != 0.0)?.abs();
    if w.iter().any(|&x| x != 0.0 && x.abs() != s) {
        return None;
    }
    let values = w
        .iter()
        .map(|&x| if x == 0.0 { 0 } else { x.signum() as i8 })
        .collect();
    TernaryMatrix::new(rows, cols, values, s).ok()
}

/// llama.cpp's LLaMA Q/K row permutation (`LlamaModel.permute`): HF row
/// `h*hd + j*hd/2 + i` becomes GGUF row `h*hd + 2*i + j`.
pub fn permute_rows<T: Copy>(v: &[T], rows: usize, cols: usize, heads: usize) -> Vec<T> {
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = Vec::with_capacity(v.len());
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * hd + j * half + i;
                out.extend_from_slice(&v[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The inverse of [`permute_rows`] (`convert_hf_to_gguf.py::LlamaModel.permute`:
/// `w.reshape(heads, 2, hd / 2, cols).swapaxes(1, 2)`): GGUF row `h*hd + 2*i + j` is HF row
/// `h*hd + j*hd/2 + i`. `heads == 0` leaves `v` as it is.
pub fn unpermute_rows<T: Copy>(v: Vec<T>, rows: usize, cols: usize, heads: usize) -> Vec<T> {
    if heads == 0 {
        return v;
    }
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = Vec::with_capacity(v.len());
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = h * hd + 2 * i + j;
                out.extend_from_slice(&v[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}
