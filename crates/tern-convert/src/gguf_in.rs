//! Reading a GGUF model file with tern-model's GGUF loader rules (`tern_model::gguf`): the same
//! config, the same tensor names, ternary types decoded with one scale per tensor and the
//! optional `<proj>.scale` folded in, float projections of bitnet archs recovered exactly when
//! they are fake-quantized (`q * s`), and llama.cpp's Q/K permutation undone for arch `llama`.

use crate::error::ConvertError;
use crate::model::{
    fake_quantized, permute_tensor, unpermute_rows, FloatData, FloatTensor, LayerWeights,
    ModelInfo, Proj, Source, N_PROJ, PROJ_NAMES,
};
use crate::vocab;
use half::{bf16, f16};
use std::path::Path;
use tern_gguf::{GgmlType, GgufError, GgufFile, TensorData};
use tern_kernels::TernaryMatrix;

pub struct GgufSource {
    f: GgufFile,
    info: ModelInfo,
    /// arch `llama`: Q/K rows are in llama.cpp's permuted order.
    permuted: bool,
    /// Float projections are latent / fake-quantized ternary weights (bitnet archs).
    float_is_ternary: bool,
    pub arch: String,
}

impl GgufSource {
    pub fn open(path: &Path) -> Result<GgufSource, ConvertError> {
        let config = tern_model::gguf::load_config(path)?;
        let f = GgufFile::open(path)?;
        let arch = f.architecture().unwrap_or_default().to_string();
        let float_is_ternary = arch != "llama";
        let proj_ternary = f
            .tensor_info("blk.0.attn_q.weight")
            .is_some_and(|t| t.ty.is_ternary());
        let vocab = vocab::from_gguf(&f)?;
        let name = f
            .get("general.name")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into())
            });
        Ok(GgufSource {
            info: ModelInfo {
                config,
                ternary: float_is_ternary || proj_ternary,
                name,
                vocab,
                notes: Vec::new(),
            },
            permuted: arch == "llama",
            float_is_ternary,
            arch,
            f,
        })
    }

    fn file(&self) -> String {
        self.f.path().display().to_string()
    }

    fn terr(&self, tensor: &str, what: impl Into<String>) -> ConvertError {
        ConvertError::file(self.file(), format!("tensor {tensor}: {}", what.into()))
    }

    fn tensor(&self, name: &str, dims: &[usize]) -> Result<TensorData<'_>, ConvertError> {
        let t = self.f.tensor(name).map_err(|e| match e {
            GgufError::NoTensor { .. } => self.terr(name, "missing"),
            e => e.into(),
        })?;
        if t.dims != dims {
            return Err(self.terr(
                name,
                format!(
                    "dims {:?} (ggml order), expected {dims:?} from the metadata",
                    t.dims
                ),
            ));
        }
        Ok(t)
    }

    fn f32s(&self, t: &TensorData) -> Result<Vec<f32>, ConvertError> {
        let v = t.to_f32()?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(self.terr(t.name, format!("element {i} is {}", v[i])));
        }
        Ok(v)
    }

    fn float_tensor(
        &self,
        t: &TensorData,
        rows: usize,
        cols: usize,
    ) -> Result<FloatTensor, ConvertError> {
        let data = match t.ty {
            GgmlType::F32 => FloatData::F32(self.f32s(t)?),
            GgmlType::F16 => {
                self.f32s(t)?;
                FloatData::F16(
                    t.bytes
                        .chunks_exact(2)
                        .map(|b| f16::from_le_bytes([b[0], b[1]]))
                        .collect(),
                )
            }
            GgmlType::BF16 => {
                self.f32s(t)?;
                FloatData::BF16(
                    t.bytes
                        .chunks_exact(2)
                        .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                        .collect(),
                )
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

    fn norm(&self, name: &str, dim: usize) -> Result<Vec<f32>, ConvertError> {
        let t = self.tensor(name, &[dim])?;
        self.f32s(&t)
    }

    /// The optional `<base>.scale` (one value multiplied into the projection's output).
    fn scale(&self, base: &str) -> Result<Option<f32>, ConvertError> {
        let name = format!("{base}.scale");
        if self.f.tensor_info(&name).is_none() {
            return Ok(None);
        }
        let t = self.f.tensor(&name)?;
        if t.n_elements() != 1 {
            return Err(self.terr(&name, format!("dims {:?}, expected a single value", t.dims)));
        }
        Ok(Some(self.f32s(&t)?[0]))
    }

    fn proj(
        &self,
        base: &str,
        rows: usize,
        cols: usize,
        rope_heads: usize,
    ) -> Result<Proj, ConvertError> {
        let name = format!("{base}.weight");
        let t = self.tensor(&name, &[cols, rows])?;
        let scale = self.scale(base)?;
        let heads = if self.permuted { rope_heads } else { 0 };
        let mut m = if t.ty.is_ternary() {
            t.to_ternary()?
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
        if heads > 0 {
            m.values = unpermute_rows(std::mem::take(&mut m.values), rows, cols, heads);
        }
        if let Some(s) = scale {
            m.gamma *= s;
        }
        if !(m.gamma.is_finite() && m.gamma >= 0.0) {
            return Err(self.terr(&name, format!("scale {} is not a finite scale", m.gamma)));
        }
        Ok(Proj::Ternary(m))
    }
}

impl Source for GgufSource {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self) -> Result<FloatTensor, ConvertError> {
        let c = &self.info.config;
        let t = self.tensor("token_embd.weight", &[c.hidden_size, c.vocab_size])?;
        self.float_tensor(&t, c.vocab_size, c.hidden_size)
    }

    fn head(&self) -> Result<Option<FloatTensor>, ConvertError> {
        let c = &self.info.config;
        if c.tie_word_embeddings {
            return Ok(None);
        }
        let t = self.tensor("output.weight", &[c.hidden_size, c.vocab_size])?;
        self.float_tensor(&t, c.vocab_size, c.hidden_size).map(Some)
    }

    fn final_norm(&self) -> Result<Vec<f32>, ConvertError> {
        self.norm("output_norm.weight", self.info.config.hidden_size)
    }

    fn layer(&self, i: usize) -> Result<LayerWeights, ConvertError> {
        let c = &self.info.config;
        let p = |name: &str| format!("blk.{i}.{name}");
        let shapes = crate::model::proj_shapes(c);
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
            .map_err(|_| ConvertError::Other("projection count".into()))?;
        let sub = |name: &str, dim: usize| -> Result<Option<Vec<f32>>, ConvertError> {
            c.sub_norms.then(|| self.norm(&p(name), dim)).transpose()
        };
        Ok(LayerWeights {
            attn_norm: self.norm(&p("attn_norm.weight"), c.hidden_size)?,
            attn_sub_norm: sub("attn_sub_norm.weight", c.q_dim())?,
            ffn_norm: self.norm(&p("ffn_norm.weight"), c.hidden_size)?,
            ffn_sub_norm: sub("ffn_sub_norm.weight", c.intermediate_size)?,
            projs,
        })
    }
}
