//! Model hyper-parameters, independent of the file format they came from.

/// The gated FFN's activation: `act(gate) * up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Squared ReLU (BitNet b1.58 2B4T, `hidden_act: "relu2"`).
    Relu2,
    /// SiLU (1bitLLM reproductions, LLaMA).
    Silu,
}

impl Activation {
    /// The name configs use (`hidden_act`).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu2 => "relu2",
            Activation::Silu => "silu",
        }
    }
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Longest sequence (prompt + generated) the model supports.
    pub max_seq_len: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub activation: Activation,
    /// Whether blocks have SubLN norms before o_proj and down_proj (all BitNet b1.58 models).
    pub sub_norms: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// Every token that ends generation (EOS, end-of-turn).
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Query heads per KV head (GQA group size).
    pub fn gqa_group(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Shape checks shared by every loader: a config that passes cannot make the forward pass
    /// index out of bounds.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_seq_len),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("field {name} must be positive"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(format!(
                "rms_norm_eps ({}) must be a positive number",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(format!(
                "rope_theta ({}) must be a positive number",
                self.rope_theta
            ));
        }
        for &t in self.bos_token_id.iter().chain(&self.eos_token_ids) {
            if t as usize >= self.vocab_size {
                return Err(format!(
                    "special token id {t} is outside the vocabulary ({})",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }
}
