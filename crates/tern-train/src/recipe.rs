//! The training configuration: one TOML file, every field optional with the defaults of the
//! bundled model, unknown fields rejected (a typo must not silently train the wrong model).

use crate::error::TrainError;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub model: ModelSpec,
    pub tokenizer: TokenizerSpec,
    pub data: DataSpec,
    pub train: TrainSpec,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Quant {
    /// BitNet b1.58: every projection ternary (absmean) with int8 per-token activations.
    #[serde(rename = "b1.58")]
    B158,
    /// The full-precision baseline of the same shape.
    #[serde(rename = "none")]
    None,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Act {
    /// Squared ReLU (BitNet b1.58 2B4T).
    Relu2,
    /// SiLU (LLaMA, 1bitLLM).
    Silu,
}

/// The architecture: the 2B4T layout (pre-norms, SubLN before o_proj and down_proj, gated FFN,
/// GQA, RoPE, no biases), which the engine runs as `BitNetForCausalLM`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSpec {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub intermediate_size: usize,
    pub activation: Act,
    pub tie_embeddings: bool,
    pub rope_theta: f32,
    pub norm_eps: f32,
    pub quant: Quant,
    /// Longest context the exported model advertises (>= train.seq_len).
    pub max_seq_len: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerSpec {
    /// Vocabulary size of the byte-level BPE trained on the training split.
    pub vocab_size: usize,
    /// Use this `tokenizer.json` instead of training one.
    pub path: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataSpec {
    /// Text files, directories (every file inside, sorted) and `.jsonl` files; empty means
    /// the bundled State of the Union corpus (speeches up to 2000 train, 2001-2021 validate).
    pub train: Vec<String>,
    /// Validation sources; empty with non-empty `train` means the last `valid_fraction` of
    /// the training documents.
    pub valid: Vec<String>,
    pub valid_fraction: f64,
    /// Field holding the text in JSONL files.
    pub text_field: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// BitNet b1.58: warmup, linear decay from `lr`, a sharp drop at `stage2_at` to
    /// `lr * stage2_lr_ratio` decaying to `lr * min_lr_ratio`; weight decay 0 in stage two.
    TwoStage,
    /// FP baseline: warmup, cosine from `lr` to `lr * min_lr_ratio`, constant weight decay.
    Cosine,
    Constant,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    pub seq_len: usize,
    pub batch_size: usize,
    pub steps: u64,
    pub seed: u64,
    pub schedule: Schedule,
    pub lr: f64,
    pub warmup_steps: u64,
    pub stage2_at: f64,
    pub stage1_end_lr_ratio: f64,
    pub stage2_lr_ratio: f64,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip; 0 disables.
    pub grad_clip: f64,
    pub eval_every: u64,
    /// Validation windows of `seq_len` tokens per evaluation (0: all of them).
    pub eval_windows: usize,
    pub save_every: u64,
    pub keep_checkpoints: usize,
    pub log_every: u64,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            hidden_size: 256,
            num_layers: 6,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_size: 768,
            activation: Act::Relu2,
            tie_embeddings: true,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            quant: Quant::B158,
            max_seq_len: 1024,
        }
    }
}

impl Default for TokenizerSpec {
    fn default() -> Self {
        TokenizerSpec {
            vocab_size: 4096,
            path: None,
        }
    }
}

impl Default for DataSpec {
    fn default() -> Self {
        DataSpec {
            train: Vec::new(),
            valid: Vec::new(),
            valid_fraction: 0.05,
            text_field: "text".into(),
        }
    }
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            seq_len: 256,
            batch_size: 16,
            steps: 1000,
            seed: 0,
            schedule: Schedule::TwoStage,
            lr: 4e-3,
            warmup_steps: 60,
            stage2_at: 0.5,
            stage1_end_lr_ratio: 0.55,
            stage2_lr_ratio: 0.35,
            min_lr_ratio: 0.0,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            eval_every: 200,
            eval_windows: 64,
            save_every: 100,
            keep_checkpoints: 3,
            log_every: 10,
        }
    }
}

impl Config {
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, TrainError> {
        let c: Config = toml::from_str(text).map_err(|e| TrainError::Config {
            file: origin.to_string(),
            what: e.to_string(),
        })?;
        c.validate(origin)?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Config, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Config::from_toml(&text, &path.display().to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serializes")
    }

    pub fn head_dim(&self) -> usize {
        self.model.hidden_size / self.model.num_heads
    }

    pub fn validate(&self, origin: &str) -> Result<(), TrainError> {
        let m = &self.model;
        let t = &self.train;
        let bad = |field: &str, what: String| {
            Err(TrainError::Config {
                file: origin.to_string(),
                what: format!("field {field}: {what}"),
            })
        };
        for (field, v) in [
            ("model.hidden_size", m.hidden_size),
            ("model.num_layers", m.num_layers),
            ("model.num_heads", m.num_heads),
            ("model.num_kv_heads", m.num_kv_heads),
            ("model.intermediate_size", m.intermediate_size),
            ("train.seq_len", t.seq_len),
            ("train.batch_size", t.batch_size),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        if !m.hidden_size.is_multiple_of(m.num_heads)
            || !(m.hidden_size / m.num_heads).is_multiple_of(2)
        {
            return bad(
                "model.num_heads",
                format!(
                    "hidden_size {} must split into {} heads of even size (RoPE)",
                    m.hidden_size, m.num_heads
                ),
            );
        }
        if !m.num_heads.is_multiple_of(m.num_kv_heads) {
            return bad(
                "model.num_kv_heads",
                format!(
                    "{} does not divide num_heads {}",
                    m.num_kv_heads, m.num_heads
                ),
            );
        }
        if m.max_seq_len < t.seq_len {
            return bad(
                "model.max_seq_len",
                format!(
                    "{} is shorter than train.seq_len {}",
                    m.max_seq_len, t.seq_len
                ),
            );
        }
        if !(self.tokenizer.vocab_size >= 260 && self.tokenizer.vocab_size <= 65_535) {
            return bad(
                "tokenizer.vocab_size",
                format!("{} is outside 260..=65535", self.tokenizer.vocab_size),
            );
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return bad("train.lr", format!("{} must be a positive number", t.lr));
        }
        if !(0.0..=1.0).contains(&t.stage2_at) {
            return bad(
                "train.stage2_at",
                format!("{} is outside 0..=1", t.stage2_at),
            );
        }
        if !(0.0..1.0).contains(&self.data.valid_fraction) {
            return bad(
                "data.valid_fraction",
                format!("{} is outside 0..1", self.data.valid_fraction),
            );
        }
        if t.steps == 0 {
            return bad("train.steps", "must be at least 1".into());
        }
        Ok(())
    }
}
