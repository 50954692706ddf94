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

use crate::config::{Activation, ModelConfig};
use crate::error::ModelError;
use crate::hf::{HeadKind, LoadOptions};
use crate::model::{Embedding, Head, Layer, Linear, Model};
use half::f16;
use std::path::Path;
use tern_gguf::{GgmlType, GgufError, GgufFile, GgufValue, TensorData};
use tern_kernels::dense::Int8Matrix;
use tern_kernels::{Layout, PackedTernary, TernaryMatrix};

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
    let f = GgufFile::open(path).map_err(gguf_err)?;
    Meta::new(&f, path).config()
}

/// Loads a GGUF model file.
pub fn load_model(path: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
    let f = open(path)?;
    load_model_from(&f, path, opts)
}

/// Opens (memory-maps and parses) a GGUF file, with tern's error type.
pub fn open(path: &Path) -> Result<GgufFile, ModelError> {
    GgufFile::open(path).map_err(gguf_err)
}

/// Loads the model of an already opened GGUF file (`path` names it in errors).
pub fn load_model_from(f: &GgufFile, path: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
    let meta = Meta::new(f, path);
    let c = meta.config()?;
    let l = Loader {
        f,
        file: meta.file.clone(),
        c: &c,
        ternary: meta.arch()? != "llama",
        permuted_qk: meta.arch()? == "llama",
        layout: opts.layout,
    };

    let embed_t = l.tensor("token_embd.weight", &[c.hidden_size, c.vocab_size])?;
    let embed = if embed_t.ty == GgmlType::F32 {
        Embedding::F32(l.f32s(&embed_t)?)
    } else {
        Embedding::F16(l.f16s(&embed_t)?)
    };
    let norm = l.norm("output_norm.weight", c.hidden_size)?;
    let head_t = if c.tie_word_embeddings {
        embed_t
    } else {
        l.tensor("output.weight", &[c.hidden_size, c.vocab_size])?
    };
    let head = match (opts.head, c.tie_word_embeddings) {
        (HeadKind::F16, true) => Head::Tied,
        (HeadKind::F16, false) if head_t.ty == GgmlType::F32 => Head::F32(l.f32s(&head_t)?),
        (HeadKind::F16, false) => Head::F16(l.f16s(&head_t)?),
        (HeadKind::Int8, _) => {
            if c.hidden_size > Int8Matrix::MAX_COLS {
                return Err(l.terr(
                    head_t.name,
                    format!(
                        "{} columns exceed the int8 head's limit of {}",
                        c.hidden_size,
                        Int8Matrix::MAX_COLS
                    ),
                ));
            }
            Head::Int8(Int8Matrix::quantize(
                &l.f32s(&head_t)?,
                c.vocab_size,
                c.hidden_size,
            ))
        }
    };
    let layers = l.layers()?;
    Ok(Model {
        config: c.clone(),
        embed,
        layers,
        norm,
        head,
    })
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
            .get("general.architecture")
            .ok_or_else(|| self.err("missing metadata key 'general.architecture'".into()))?
            .as_str()
            .ok_or_else(|| {
                self.err("metadata key 'general.architecture' is not a string".into())
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
        for key in [format!("{a}.hidden_activation"), format!("{a}.hidden_act")] {
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
        let k = |s: &str| format!("{a}.{s}");
        let hidden = self.req_uint(&k("embedding_length"))?;
        let heads = self.req_uint(&k("attention.head_count"))?;
        let kv_heads = self.uint(&k("attention.head_count_kv"))?.unwrap_or(heads);
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(self.err(format!(
                "{} ({hidden}) is not a multiple of {} ({heads})",
                k("embedding_length"),
                k("attention.head_count")
            )));
        }
        let head_dim = hidden / heads;
        if let Some(rot) = self.uint(&k("rope.dimension_count"))? {
            if rot != head_dim {
                return Err(self.err(format!(
                    "{} is {rot} but the head dimension is {head_dim}: partial rotary \
                     embeddings are not supported",
                    k("rope.dimension_count")
                )));
            }
        }
        let vocab = match self.uint(&k("vocab_size"))? {
            Some(v) => v,
            None => match self
                .f
                .get("tokenizer.ggml.tokens")
                .and_then(GgufValue::as_array)
            {
                Some(t) => t.len(),
                // Last resort: the embedding table's row count (ne1).
                None => self
                    .f
                    .tensor_info("token_embd.weight")
                    .and_then(|t| t.dims.get(1).copied())
                    .ok_or_else(|| {
                        self.err(format!(
                            "no '{}', no 'tokenizer.ggml.tokens' and no 'token_embd.weight' \
                             to tell the vocabulary size",
                            k("vocab_size")
                        ))
                    })?,
            },
        };
        let eos = self.token_id("tokenizer.ggml.eos_token_id")?;
        let eot = self.token_id("tokenizer.ggml.eot_token_id")?;
        let mut eos_token_ids: Vec<u32> = eos.into_iter().collect();
        if let Some(t) = eot.filter(|t| !eos_token_ids.contains(t)) {
            eos_token_ids.push(t);
        }
        let config = ModelConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.req_uint(&k("feed_forward_length"))?,
            num_layers: self.req_uint(&k("block_count"))?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            max_seq_len: self.req_uint(&k("context_length"))?,
            rms_norm_eps: self
                .float(&k("attention.layer_norm_rms_epsilon"))?
                .ok_or_else(|| {
                    self.err(format!(
                        "missing metadata key '{}'",
                        k("attention.layer_norm_rms_epsilon")
                    ))
                })?,
            rope_theta: self.float(&k("rope.freq_base"))?.unwrap_or(10000.0),
            activation: self.activation(a)?,
            sub_norms: self.f.tensor_info("blk.0.attn_sub_norm.weight").is_some(),
            tie_word_embeddings: self.f.tensor_info("output.weight").is_none(),
            bos_token_id: self.token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids,
        };
        config.validate().map_err(|e| self.err(e))?;
        Ok(config)
    }
}

/// Shared state of one load.
struct Loader<'a> {
    f: &'a GgufFile,
    file: String,
    c: &'a ModelConfig,
    /// Float projections are ternarized (bitnet archs) rather than kept dense (llama).
    ternary: bool,
    /// Q/K rows are in llama.cpp's permuted RoPE order (arch `llama`).
    permuted_qk: bool,
    layout: Layout,
}

impl<'a> Loader<'a> {
    fn terr(&self, tensor: &str, what: String) -> ModelError {
        ModelError::Tensor {
            file: self.file.clone(),
            tensor: tensor.to_string(),
            what,
        }
    }

    /// Tensor `name`, which must have ggml dims `dims`.
    fn tensor(&self, name: &str, dims: &[usize]) -> Result<TensorData<'a>, ModelError> {
        let t = self.f.tensor(name).map_err(|e| match e {
            GgufError::NoTensor { .. } => self.terr(name, "missing".into()),
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

    /// Values as f16: F16 bytes as they are, anything else dequantized and rounded.
    fn f16s(&self, t: &TensorData) -> Result<Vec<f16>, ModelError> {
        if t.ty == GgmlType::F16 {
            let v: Vec<f16> = t
                .bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(self.terr(t.name, format!("element {i} is {}", v[i])));
            }
            return Ok(v);
        }
        Ok(self.f32s(t)?.into_iter().map(f16::from_f32).collect())
    }

    fn norm(&self, name: &str, dim: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.tensor(name, &[dim])?;
        self.f32s(&t)
    }

    fn layers(&self) -> Result<Vec<Layer>, ModelError> {
        crate::model::load_layers(self.c.num_layers, |i| self.layer(i))
    }

    fn layer(&self, i: usize) -> Result<Layer, ModelError> {
        let c = self.c;
        let (h, q, kv, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let p = |name: &str| format!("blk.{i}.{name}");
        let sub = |name: &str, dim: usize| -> Result<Option<Vec<f32>>, ModelError> {
            c.sub_norms.then(|| self.norm(&p(name), dim)).transpose()
        };
        Ok(Layer {
            attn_norm: self.norm(&p("attn_norm.weight"), h)?,
            q: self.linear(&p("attn_q"), q, h, c.num_heads)?,
            k: self.linear(&p("attn_k"), kv, h, c.num_kv_heads)?,
            v: self.linear(&p("attn_v"), kv, h, 0)?,
            attn_sub_norm: sub("attn_sub_norm.weight", q)?,
            o: self.linear(&p("attn_output"), h, q, 0)?,
            ffn_norm: self.norm(&p("ffn_norm.weight"), h)?,
            gate: self.linear(&p("ffn_gate"), ff, h, 0)?,
            up: self.linear(&p("ffn_up"), ff, h, 0)?,
            ffn_sub_norm: sub("ffn_sub_norm.weight", ff)?,
            down: self.linear(&p("ffn_down"), h, ff, 0)?,
        })
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
    fn linear(
        &self,
        base: &str,
        rows: usize,
        cols: usize,
        rope_heads: usize,
    ) -> Result<Linear, ModelError> {
        let name = format!("{base}.weight");
        let t = self.tensor(&name, &[cols, rows])?;
        let scale = self.scale(base)?;
        let heads = if self.permuted_qk { rope_heads } else { 0 };
        let fix = |v: Vec<_>| unpermute_rows(v, rows, cols, heads);
        let mut m = if t.ty.is_ternary() {
            let mut m = t.to_ternary().map_err(gguf_err)?;
            m.values = fix(m.values);
            m
        } else if self.ternary {
            let w = self.f32s(&t)?;
            fake_quantized(rows, cols, &w).map_or_else(
                || {
                    TernaryMatrix::quantize_absmean(rows, cols, &w)
                        .map_err(|e| self.terr(&name, e.to_string()))
                },
                Ok,
            )?
        } else {
            if scale.is_some() {
                return Err(self.terr(
                    &format!("{base}.scale"),
                    "a scale on a dense projection is not supported".into(),
                ));
            }
            return Ok(if t.ty == GgmlType::F32 {
                Linear::F32 {
                    w: unpermute_rows(self.f32s(&t)?, rows, cols, heads),
                    rows,
                    cols,
                }
            } else {
                Linear::F16 {
                    w: unpermute_rows(self.f16s(&t)?, rows, cols, heads),
                    rows,
                    cols,
                }
            });
        };
        if let Some(s) = scale {
            m.gamma *= s;
        }
        if !m.gamma.is_finite() {
            return Err(self.terr(&name, format!("scale {} is not finite", m.gamma)));
        }
        Ok(Linear::Ternary(PackedTernary::pack(&m, self.layout)))
    }
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
