//! A model of a named shape ([`crate::shapes`]) with random ternary weights, as a [`Source`]:
//! what benchmarks convert into files peers can load too (`tern convert --shape`), layer by
//! layer, so that a 70B shape is written without holding it in memory. The tokenizer, when
//! wanted, is another model's (e.g. one of llama.cpp's `ggml-vocab-*.gguf` files), whose vocab
//! size replaces the shape's.

use super::{
    proj_shapes, FloatData, FloatTensor, LayerWeights, ModelInfo, Proj, Source, TextInterface,
    Vocab,
};
use crate::error::ModelError;
use half::f16;
use tern_kernels::formats::TernaryMatrix;
use tern_kernels::rng::Rng;

pub struct SyntheticSource {
    info: ModelInfo,
    vocab_from: Option<Box<dyn Source>>,
    seed: u64,
}

impl SyntheticSource {
    /// The shape `name`, with the tokenizer of the model at `vocab_from` (any format).
    pub fn new(
        name: &str,
        vocab_from: Option<&std::path::Path>,
        seed: u64,
    ) -> Result<SyntheticSource, ModelError> {
        let mut config = crate::shapes::named(name).ok_or_else(|| {
            let names: Vec<&str> = crate::shapes::NAMES.iter().map(|n| n.0).collect();
            ModelError::Other(format!(
                "unknown shape {name:?} (expected one of {})",
                names.join(", ")
            ))
        })?;
        let donor = vocab_from.map(super::open).transpose()?;
        if let Some(d) = &donor {
            let dc = &d.info().config;
            config.vocab_size = dc.vocab_size;
            config.bos_token_id = dc.bos_token_id;
            config.eos_token_ids = dc.eos_token_ids.clone();
        }
        config.tie_word_embeddings = true;
        Ok(SyntheticSource {
            info: ModelInfo {
                config,
                ternary: true,
                name: format!("synthetic {name}"),
                format: "synthetic",
                arch: None,
            },
            vocab_from: donor,
            seed,
        })
    }
}

impl Source for SyntheticSource {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn text(&self) -> Result<TextInterface, ModelError> {
        match &self.vocab_from {
            Some(d) => d.text(),
            None => Ok(TextInterface {
                tokenizer: None,
                tokenizer_error: Some("a synthetic model without --vocab-from".into()),
                tokenizer_origin: "none",
                chat_template: None,
                chat_template_origin: "none",
                stop_tokens: self.info.config.eos_token_ids.clone(),
            }),
        }
    }

    fn vocab(&self, notes: &mut Vec<String>) -> Result<Option<Vocab>, ModelError> {
        match &self.vocab_from {
            Some(d) => d.vocab(notes),
            None => Ok(None),
        }
    }

    fn embed(&self) -> Result<FloatTensor, ModelError> {
        let c = &self.info.config;
        let mut rng = Rng::new(self.seed ^ 0xe3b0);
        Ok(FloatTensor {
            name: "token_embd.weight".into(),
            rows: c.vocab_size,
            cols: c.hidden_size,
            data: FloatData::F16(
                (0..c.vocab_size * c.hidden_size)
                    .map(|_| f16::from_f32(rng.unit_f32() * 0.05))
                    .collect(),
            ),
        })
    }

    fn head(&self) -> Result<Option<FloatTensor>, ModelError> {
        Ok(None)
    }

    fn final_norm(&self) -> Result<Vec<f32>, ModelError> {
        Ok(vec![1.0; self.info.config.hidden_size])
    }

    fn layer(&self, i: usize) -> Result<LayerWeights, ModelError> {
        let c = &self.info.config;
        if i >= c.num_layers {
            return Err(ModelError::Other(format!(
                "layer {i} of a {}-layer model",
                c.num_layers
            )));
        }
        // Each layer its own weights (seeded by its index), scaled as trained layers are:
        // gamma ~ 1/sqrt(cols) keeps activations O(1).
        let mut rng = Rng::new(
            self.seed
                .wrapping_add(1 + i as u64)
                .wrapping_mul(0x9e37_79b9),
        );
        let projs = proj_shapes(c).map(|(rows, cols)| {
            Proj::Ternary(TernaryMatrix::random(
                rows,
                cols,
                1.0 / (cols as f32).sqrt(),
                &mut rng,
            ))
        });
        Ok(LayerWeights {
            attn_norm: vec![1.0; c.hidden_size],
            attn_sub_norm: c.sub_norms.then(|| vec![1.0; c.q_dim()]),
            ffn_norm: vec![1.0; c.hidden_size],
            ffn_sub_norm: c.sub_norms.then(|| vec![1.0; c.intermediate_size]),
            projs,
        })
    }
}
