//! The paper's arithmetic energy model (BitNet b1.58, Figure 3): operation counts of one
//! decoded token times a per-operation energy at 7 nm.
//!
//! The table is the one BitNet (Wang et al. 2023, "BitNet: Scaling 1-bit Transformers", Table 2)
//! takes from Horowitz (ISSCC 2014) for 45 nm and a 7 nm source, and that BitNet b1.58 reuses;
//! see `../shared/docs/bitnet-spec.md` section 4.5. With it, a ternary matrix multiplication
//! (INT8 additions only) against an FP16 one (a multiply and an add per weight) is
//! 0.50 / 0.007 = 71.4x cheaper in arithmetic, the paper's figure for the matmul.

use tern_model::ModelConfig;

/// Picojoules per operation at 7 nm.
pub mod pj7 {
    pub const FP16_ADD: f64 = 0.16;
    pub const FP16_MUL: f64 = 0.34;
    pub const INT8_ADD: f64 = 0.007;
    pub const INT8_MUL: f64 = 0.07;
    pub const FP32_ADD: f64 = 0.38;
    pub const FP32_MUL: f64 = 1.31;
}

/// Which arithmetic the projections use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    /// BitNet b1.58: every weight is an addition (or subtraction) of an INT8 activation;
    /// the per-tensor weight scale and per-token activation scale cost one FP16 multiply per
    /// output and per input element.
    Ternary,
    /// FP16 LLaMA: one FP16 multiply and one FP16 add per weight.
    Fp16,
}

/// Arithmetic energy of one decoded token, in picojoules, by component.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenEnergy {
    /// The attention and FFN projections (the part BitNet b1.58 makes ternary).
    pub projections: f64,
    /// Attention scores and the weighted sum of values over `context` cached positions (FP16
    /// in both models).
    pub attention: f64,
    /// The LM head (FP16 in both models: BitNet b1.58 keeps it in high precision).
    pub head: f64,
}

impl TokenEnergy {
    pub fn total(&self) -> f64 {
        self.projections + self.attention + self.head
    }
}

/// Multiply-accumulates of the projections of one token (all layers).
pub fn projection_macs(c: &ModelConfig) -> f64 {
    let per_layer =
        c.hidden_size * (2 * c.q_dim() + 2 * c.kv_dim()) + 3 * c.hidden_size * c.intermediate_size;
    (per_layer * c.num_layers) as f64
}

/// Energy of one decoded token at position `context` (norms, RoPE, softmax and the
/// activation function are left out: they are O(hidden) per layer, below 0.1% at these sizes).
pub fn token_energy(c: &ModelConfig, arith: Arith, context: usize) -> TokenEnergy {
    let fp16_mac = pj7::FP16_MUL + pj7::FP16_ADD;
    let macs = projection_macs(c);
    let projections = match arith {
        Arith::Fp16 => macs * fp16_mac,
        Arith::Ternary => {
            // Scales: one multiply per projection input element (quantize the activation)
            // and one per output element (dequantize), for q, k, v, o, gate, up, down.
            let (h, i, q, kv) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
            let inputs = 3 * h + q + 2 * h + i;
            let outputs = q + 2 * kv + h + 2 * i + h;
            macs * pj7::INT8_ADD + ((inputs + outputs) * c.num_layers) as f64 * pj7::FP16_MUL
        }
    };
    // Scores q.k and the sum of p.v: q_dim multiply-adds per cached position each.
    let attention = (2 * context * c.q_dim() * c.num_layers) as f64 * fp16_mac;
    let head = (c.vocab_size * c.hidden_size) as f64 * fp16_mac;
    TokenEnergy {
        projections,
        attention,
        head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's matmul saving follows from the table: 71.4x.
    #[test]
    fn matmul_saving_is_the_papers() {
        let r = (pj7::FP16_MUL + pj7::FP16_ADD) / pj7::INT8_ADD;
        assert!((r - 71.43).abs() < 0.01, "{r}");
    }

    /// Counts by hand for a small config: every component, both models.
    #[test]
    fn counts_match_a_hand_computation() {
        let mut c = tern_model::shapes::named("700m").unwrap();
        c.num_layers = 2;
        // 700m: hidden 1536, inter 4096, 16 heads of 96 (q = kv = 1536), vocab 32002.
        let macs = 2.0 * (1536.0 * 4.0 * 1536.0 + 3.0 * 1536.0 * 4096.0);
        assert_eq!(projection_macs(&c), macs);
        let f = token_energy(&c, Arith::Fp16, 100);
        assert!((f.projections - macs * 0.5).abs() < 1e-6 * macs);
        assert!((f.attention - 2.0 * 100.0 * 1536.0 * 2.0 * 0.5).abs() < 1e-6);
        assert!((f.head - 32002.0 * 1536.0 * 0.5).abs() < 1e-3);
        let t = token_energy(&c, Arith::Ternary, 100);
        let scales = 2.0 * ((3.0 * 1536.0 + 1536.0 + 2.0 * 1536.0 + 4096.0) // inputs
            + (1536.0 * 3.0 + 1536.0 + 2.0 * 4096.0 + 1536.0)) // outputs
            * 0.34;
        assert!((t.projections - (macs * 0.007 + scales)).abs() < 1e-6 * macs);
        assert_eq!(t.attention, f.attention);
        assert_eq!(t.head, f.head);
        // Two blocks under a 32K-vocab FP16 head: the head dominates both, so the end-to-end
        // saving is far below the matmul's 71.4x.
        let r = f.total() / t.total();
        assert!((1.5..3.0).contains(&r), "{r}");
    }

    /// The end-to-end saving grows with model size (the paper's Figure 3, right).
    #[test]
    fn saving_grows_with_size() {
        let ratio = |s: &str| {
            let c = tern_model::shapes::named(s).unwrap();
            token_energy(&c, Arith::Fp16, 512).total()
                / token_energy(&c, Arith::Ternary, 512).total()
        };
        let (a, b, d) = (ratio("700m"), ratio("7b"), ratio("70b"));
        assert!(a < b && b < d, "{a} {b} {d}");
    }
}
