//! Reading a Hugging Face model directory with tern-model's HF loader rules: the same config
//! parsing, the same tensor names and the same ternarization (absmean for latent weights,
//! `unpack` + `weight_scale` for packed ones), so a converted file holds exactly the ternary
//! values and scales `tern_model::hf::load_model` would run.

use crate::error::ConvertError;
use crate::model::{
    FloatData, FloatTensor, LayerWeights, ModelInfo, Proj, Source, N_PROJ, PROJ_NAMES,
};
use crate::vocab;
use half::{bf16, f16};
use safetensors::Dtype;
use std::path::Path;
use tern_model::hf::{self, HfQuant, Tensor, Weights};

pub struct HfSource {
    info: ModelInfo,
    quant: HfQuant,
    weights: Weights,
}

impl HfSource {
    pub fn open(dir: &Path) -> Result<HfSource, ConvertError> {
        let (config, quant) = hf::load_config(dir)?;
        let weights = Weights::open(dir)?;
        let mut notes = Vec::new();
        let vocab = vocab::from_hf_dir(dir, &config, &mut notes)?;
        let name = model_name(dir);
        Ok(HfSource {
            info: ModelInfo {
                config,
                ternary: quant != HfQuant::Dense,
                name,
                vocab,
                notes,
            },
            quant,
            weights,
        })
    }
}

/// `_name_or_path` of config.json when it is a plain name, else the directory's name.
fn model_name(dir: &Path) -> String {
    let from_config = std::fs::read_to_string(dir.join(hf::CONFIG_FILE))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.get("_name_or_path")?.as_str().map(str::to_string))
        .filter(|s| !s.is_empty());
    let base = from_config.unwrap_or_else(|| {
        std::fs::canonicalize(dir)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into())
    });
    base.rsplit('/').next().unwrap_or(&base).to_string()
}

/// A float tensor in its own storage, with non-finite values rejected.
fn float_tensor(t: &Tensor, rows: usize, cols: usize) -> Result<FloatTensor, ConvertError> {
    let data = match t.dtype {
        Dtype::F32 | Dtype::F64 => FloatData::F32(t.to_f32()?),
        Dtype::F16 => {
            let v: Vec<f16> = t
                .data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(t
                    .err(format!("non-finite value {} at element {i}", v[i]))
                    .into());
            }
            FloatData::F16(v)
        }
        Dtype::BF16 => {
            let v: Vec<bf16> = t
                .data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(t
                    .err(format!("non-finite value {} at element {i}", v[i]))
                    .into());
            }
            FloatData::BF16(v)
        }
        d => {
            return Err(t
                .err(format!(
                    "dtype {d:?}, expected a float type (F32, F16, BF16)"
                ))
                .into())
        }
    };
    Ok(FloatTensor {
        name: t.name.to_string(),
        rows,
        cols,
        data,
    })
}

impl HfSource {
    fn norm(&self, name: &str, dim: usize) -> Result<Vec<f32>, ConvertError> {
        let t = self.weights.get(name)?;
        t.expect_shape(&[dim], "from config.json")?;
        Ok(t.to_f32()?)
    }

    /// A sub-norm under either of its names (2B4T's or 1bitLLM's).
    fn sub_norm(&self, names: [String; 2], dim: usize) -> Result<Vec<f32>, ConvertError> {
        let name = if !self.weights.contains(&names[0]) && self.weights.contains(&names[1]) {
            &names[1]
        } else {
            &names[0]
        };
        self.norm(name, dim)
    }

    fn proj(&self, name: &str, rows: usize, cols: usize) -> Result<Proj, ConvertError> {
        let packed = match self.quant {
            HfQuant::Absmean => None,
            HfQuant::Packed(convention) => Some(convention),
            HfQuant::Dense => {
                let t = self.weights.get(name)?;
                t.expect_shape(&[rows, cols], &format!("{rows}x{cols} from config.json"))?;
                return Ok(Proj::Dense(float_tensor(&t, rows, cols)?));
            }
        };
        Ok(Proj::Ternary(hf::ternary_projection(
            &self.weights,
            packed,
            name,
            rows,
            cols,
        )?))
    }
}

impl Source for HfSource {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self) -> Result<FloatTensor, ConvertError> {
        let c = &self.info.config;
        let t = self.weights.get("model.embed_tokens.weight")?;
        t.expect_shape(&[c.vocab_size, c.hidden_size], "vocab_size x hidden_size")?;
        float_tensor(&t, c.vocab_size, c.hidden_size)
    }

    fn head(&self) -> Result<Option<FloatTensor>, ConvertError> {
        let c = &self.info.config;
        if c.tie_word_embeddings {
            return Ok(None);
        }
        let t = self.weights.get("lm_head.weight")?;
        t.expect_shape(&[c.vocab_size, c.hidden_size], "vocab_size x hidden_size")?;
        float_tensor(&t, c.vocab_size, c.hidden_size).map(Some)
    }

    fn final_norm(&self) -> Result<Vec<f32>, ConvertError> {
        self.norm("model.norm.weight", self.info.config.hidden_size)
    }

    fn layer(&self, i: usize) -> Result<LayerWeights, ConvertError> {
        let c = &self.info.config;
        let p = |name: &str| format!("model.layers.{i}.{name}.weight");
        let shapes = crate::model::proj_shapes(c);
        let mut projs = Vec::with_capacity(N_PROJ);
        for ((hf_name, _), (rows, cols)) in PROJ_NAMES.iter().zip(shapes) {
            projs.push(self.proj(&p(hf_name), rows, cols)?);
        }
        let projs: [Proj; N_PROJ] = projs
            .try_into()
            .map_err(|_| ConvertError::Other("projection count".into()))?;
        let (attn_sub_norm, ffn_sub_norm) = if c.sub_norms {
            (
                Some(self.sub_norm(
                    [p("self_attn.attn_sub_norm"), p("self_attn.inner_attn_ln")],
                    c.q_dim(),
                )?),
                Some(self.sub_norm(
                    [p("mlp.ffn_sub_norm"), p("mlp.ffn_layernorm")],
                    c.intermediate_size,
                )?),
            )
        } else {
            (None, None)
        };
        Ok(LayerWeights {
            attn_norm: self.norm(&p("input_layernorm"), c.hidden_size)?,
            attn_sub_norm,
            ffn_norm: self.norm(&p("post_attention_layernorm"), c.hidden_size)?,
            ffn_sub_norm,
            projs,
        })
    }
}
