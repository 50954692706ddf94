//! The Hugging Face directory reader: `config.json` ([`super::config_json`]), safetensors
//! ([`super::Weights`]), `tokenizer.json` and `tokenizer_config.json`, as a [`Source`].
//! Latent float projections are ternarized with absmean, packed ones decoded with their
//! `weight_scale` ([`super::ternary_projection`]); dense ones keep their storage.

use super::config_json::{self, Family};
use super::{HfQuant, Tensor, Weights};
use crate::chat::ChatTemplate;
use crate::error::ModelError;
use crate::source::{
    vocab, FloatData, FloatTensor, LayerWeights, ModelInfo, Proj, Source, TextInterface, Vocab,
    N_PROJ, PROJ_NAMES,
};
use crate::tokenizer::Tokenizer;
use half::{bf16, f16};
use safetensors::Dtype;
use std::path::{Path, PathBuf};

pub struct HfSource {
    dir: PathBuf,
    info: ModelInfo,
    quant: HfQuant,
    family: Family,
    weights: Weights,
}

impl HfSource {
    pub fn open(dir: &Path) -> Result<HfSource, ModelError> {
        let parsed = config_json::parse(dir)?;
        let weights = Weights::open(dir)?;
        Ok(HfSource {
            dir: dir.to_path_buf(),
            info: ModelInfo {
                ternary: parsed.quant != HfQuant::Dense,
                config: parsed.config,
                name: model_name(dir),
                format: "hf",
                arch: None,
            },
            quant: parsed.quant,
            family: parsed.family,
            weights,
        })
    }
}

/// `_name_or_path` of config.json when it is a plain name, else the directory's name.
fn model_name(dir: &Path) -> String {
    let from_config = std::fs::read_to_string(dir.join(super::CONFIG_FILE))
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
fn float_tensor(t: &Tensor, rows: usize, cols: usize) -> Result<FloatTensor, ModelError> {
    let data = match t.dtype {
        Dtype::F32 | Dtype::F64 => FloatData::F32(t.to_f32()?),
        Dtype::F16 => {
            let v: Vec<f16> = t
                .data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(t.err(format!("non-finite value {} at element {i}", v[i])));
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
                return Err(t.err(format!("non-finite value {} at element {i}", v[i])));
            }
            FloatData::BF16(v)
        }
        d => {
            return Err(t.err(format!(
                "dtype {d:?}, expected a float type (F32, F16, BF16)"
            )))
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
    fn norm(&self, name: &str, dim: usize, why: &str) -> Result<Vec<f32>, ModelError> {
        let t = self.weights.get(name)?;
        t.expect_shape(&[dim], why)?;
        t.to_f32()
    }

    /// A sub-norm under either of its names (2B4T's or 1bitLLM's): the family's own name
    /// first, since converters copy one family's layout into the other's names.
    fn sub_norm(
        &self,
        mut names: [String; 2],
        dim: usize,
        why: &str,
    ) -> Result<Vec<f32>, ModelError> {
        if self.family == Family::OneBitLlm {
            names.swap(0, 1);
        }
        let name = if !self.weights.contains(&names[0]) && self.weights.contains(&names[1]) {
            &names[1]
        } else {
            &names[0]
        };
        self.norm(name, dim, why)
    }

    fn proj(&self, name: &str, rows: usize, cols: usize) -> Result<Proj, ModelError> {
        let packed = match self.quant {
            HfQuant::Absmean => None,
            HfQuant::Packed(convention) => Some(convention),
            HfQuant::Dense => {
                let t = self.weights.get(name)?;
                t.expect_shape(&[rows, cols], &format!("{rows}x{cols} from config.json"))?;
                return Ok(Proj::Dense(float_tensor(&t, rows, cols)?));
            }
        };
        Ok(Proj::Ternary(super::ternary_projection(
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

    fn text(&self) -> Result<TextInterface, ModelError> {
        let c = &self.info.config;
        let tok_path = self.dir.join(vocab::TOKENIZER_FILE);
        let mut tokenizer = if tok_path.exists() {
            Some(Tokenizer::from_file(&tok_path)?)
        } else {
            None
        };
        if let (Some(t), Some(bos)) = (tokenizer.as_mut(), c.bos_token_id) {
            // The config's BOS wins over guessing from the vocabulary.
            t.set_bos_token_id(Some(bos));
        }
        let tc_path = self.dir.join(vocab::TOKENIZER_CONFIG_FILE);
        let chat_template = if tc_path.exists() {
            ChatTemplate::from_tokenizer_config(&tc_path)?
        } else {
            None
        };
        let stop_tokens = match &tokenizer {
            Some(t) => t.stop_tokens(&c.eos_token_ids),
            None => c.eos_token_ids.clone(),
        };
        Ok(TextInterface {
            tokenizer_origin: "tokenizer.json",
            tokenizer,
            tokenizer_error: None,
            chat_template,
            chat_template_origin: "tokenizer_config.json",
            stop_tokens,
        })
    }

    fn vocab(&self, notes: &mut Vec<String>) -> Result<Option<Vocab>, ModelError> {
        vocab::from_hf_dir(&self.dir, &self.info.config, notes)
    }

    fn embed(&self) -> Result<FloatTensor, ModelError> {
        let c = &self.info.config;
        let t = self.weights.get("model.embed_tokens.weight")?;
        t.expect_shape(&[c.vocab_size, c.hidden_size], "vocab_size x hidden_size")?;
        float_tensor(&t, c.vocab_size, c.hidden_size)
    }

    fn head(&self) -> Result<Option<FloatTensor>, ModelError> {
        let c = &self.info.config;
        if c.tie_word_embeddings {
            return Ok(None);
        }
        let t = self.weights.get("lm_head.weight")?;
        t.expect_shape(&[c.vocab_size, c.hidden_size], "vocab_size x hidden_size")?;
        float_tensor(&t, c.vocab_size, c.hidden_size).map(Some)
    }

    fn final_norm(&self) -> Result<Vec<f32>, ModelError> {
        self.norm(
            "model.norm.weight",
            self.info.config.hidden_size,
            "hidden_size",
        )
    }

    fn layer(&self, i: usize) -> Result<LayerWeights, ModelError> {
        let c = &self.info.config;
        let p = |name: &str| format!("model.layers.{i}.{name}.weight");
        let shapes = crate::source::proj_shapes(c);
        let mut projs = Vec::with_capacity(N_PROJ);
        for ((hf_name, _), (rows, cols)) in PROJ_NAMES.iter().zip(shapes) {
            projs.push(self.proj(&p(hf_name), rows, cols)?);
        }
        let projs: [Proj; N_PROJ] = projs
            .try_into()
            .map_err(|_| ModelError::Other("projection count".into()))?;
        let (attn_sub_norm, ffn_sub_norm) = if c.sub_norms {
            (
                Some(self.sub_norm(
                    [p("self_attn.attn_sub_norm"), p("self_attn.inner_attn_ln")],
                    c.q_dim(),
                    "num_attention_heads x head_dim",
                )?),
                Some(self.sub_norm(
                    [p("mlp.ffn_sub_norm"), p("mlp.ffn_layernorm")],
                    c.intermediate_size,
                    "intermediate_size",
                )?),
            )
        } else {
            (None, None)
        };
        Ok(LayerWeights {
            attn_norm: self.norm(&p("input_layernorm"), c.hidden_size, "hidden_size")?,
            attn_sub_norm,
            ffn_norm: self.norm(&p("post_attention_layernorm"), c.hidden_size, "hidden_size")?,
            ffn_sub_norm,
            projs,
        })
    }
}
