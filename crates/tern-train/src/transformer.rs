//! The trainable model, written top to bottom like llama2.c: the 2B4T layout with every
//! projection a BitLinear (b1.58) or a plain linear layer (the FP baseline).
//!
//! Parameters carry their Hugging Face names (`model.layers.3.self_attn.q_proj.weight`), so
//! checkpoints and exports need no renaming and the engine loads the export directly.

use crate::ops;
use crate::quant::{self, ActQuant, Int4GroupQuant, WeightQuant};
use crate::recipe::{Act, Config, Quant};
use candle_core::{DType, Device, Tensor, Var};
use std::sync::Arc;
use tern_kernels::rng::Rng;

/// How projections treat their weights in the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjMode {
    /// BitNet b1.58 QAT: ternary weights and int8 activations through the STE.
    B158,
    /// Full precision.
    Dense,
    /// Post-training 4-bit per-group weights (evaluation only).
    Int4 { group: usize },
}

impl From<Quant> for ProjMode {
    fn from(q: Quant) -> Self {
        match q {
            Quant::B158 => ProjMode::B158,
            Quant::None => ProjMode::Dense,
        }
    }
}

/// Names and shapes of every parameter, in a fixed order (the order of checkpoints and of the
/// optimizer state).
pub fn param_specs(c: &Config, vocab: usize) -> Vec<(String, Vec<usize>)> {
    let m = &c.model;
    let d = m.hidden_size;
    let hd = c.head_dim();
    let q = m.num_heads * hd;
    let kv = m.num_kv_heads * hd;
    let ff = m.intermediate_size;
    let mut specs = vec![("model.embed_tokens.weight".to_string(), vec![vocab, d])];
    for i in 0..m.num_layers {
        let p = format!("model.layers.{i}");
        specs.extend([
            (format!("{p}.input_layernorm.weight"), vec![d]),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, d]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, d]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, d]),
            (format!("{p}.self_attn.attn_sub_norm.weight"), vec![q]),
            (format!("{p}.self_attn.o_proj.weight"), vec![d, q]),
            (format!("{p}.post_attention_layernorm.weight"), vec![d]),
            (format!("{p}.mlp.gate_proj.weight"), vec![ff, d]),
            (format!("{p}.mlp.up_proj.weight"), vec![ff, d]),
            (format!("{p}.mlp.ffn_sub_norm.weight"), vec![ff]),
            (format!("{p}.mlp.down_proj.weight"), vec![d, ff]),
        ]);
    }
    specs.push(("model.norm.weight".to_string(), vec![d]));
    if !m.tie_embeddings {
        specs.push(("lm_head.weight".to_string(), vec![vocab, d]));
    }
    specs
}

/// Projections are the quantized (b1.58) parameters; everything else stays full precision.
pub fn is_projection(name: &str) -> bool {
    name.ends_with("_proj.weight")
}

/// Norm gains are excluded from weight decay, as usual.
pub fn decays(name: &str) -> bool {
    !name.ends_with("norm.weight")
}

pub struct Model {
    pub config: Config,
    pub vocab: usize,
    /// `(name, variable)` in [`param_specs`] order.
    pub params: Vec<(String, Var)>,
    rope_cos: Arc<Vec<f32>>,
    rope_sin: Arc<Vec<f32>>,
}

struct LayerRefs<'a> {
    input_norm: &'a Tensor,
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    attn_sub: &'a Tensor,
    o: &'a Tensor,
    post_norm: &'a Tensor,
    gate: &'a Tensor,
    up: &'a Tensor,
    ffn_sub: &'a Tensor,
    down: &'a Tensor,
}

/// Standard normal via Box-Muller on the project's deterministic generator.
fn normal(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = ((rng.next_u64() >> 11) as f64) / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32 * std);
        out.push((r * t.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}

impl Model {
    /// A freshly initialised model: N(0, 0.02) matrices (output projections scaled by
    /// 1/sqrt(2 * layers), as GPT-2 does), unit norm gains.
    pub fn init(config: &Config, vocab: usize) -> candle_core::Result<Model> {
        let mut rng = Rng::new(config.train.seed ^ 0x5EED_1417);
        let resid = 0.02 / (2.0 * config.model.num_layers as f32).sqrt();
        let params = param_specs(config, vocab)
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let data = if shape.len() == 1 {
                    vec![1.0f32; n]
                } else if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                    normal(&mut rng, n, resid)
                } else {
                    normal(&mut rng, n, 0.02)
                };
                let t = Tensor::from_vec(data, shape, &Device::Cpu)?;
                Ok((name, Var::from_tensor(&t)?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Model::from_params(config, vocab, params)
    }

    /// Wraps existing parameters (a checkpoint), checking names and shapes.
    pub fn from_params(
        config: &Config,
        vocab: usize,
        params: Vec<(String, Var)>,
    ) -> candle_core::Result<Model> {
        let specs = param_specs(config, vocab);
        if specs.len() != params.len() {
            candle_core::bail!("expected {} parameters, got {}", specs.len(), params.len());
        }
        for ((name, shape), (pname, var)) in specs.iter().zip(&params) {
            if name != pname || var.dims() != shape.as_slice() {
                candle_core::bail!(
                    "parameter {pname} {:?} does not match the config's {name} {shape:?}",
                    var.dims()
                );
            }
        }
        let (rope_cos, rope_sin) = ops::rope_tables(
            config.model.max_seq_len.max(config.train.seq_len),
            config.head_dim(),
            config.model.rope_theta,
        );
        Ok(Model {
            config: config.clone(),
            vocab,
            params,
            rope_cos,
            rope_sin,
        })
    }

    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Parameters in the transformer blocks (what "N parameters" means for LLaMA-style
    /// tables excludes nothing; we report both).
    pub fn num_projection_params(&self) -> usize {
        self.params
            .iter()
            .filter(|(n, _)| is_projection(n))
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    fn p(&self, i: usize) -> &Tensor {
        self.params[i].1.as_tensor()
    }

    fn layer(&self, l: usize) -> LayerRefs<'_> {
        let b = 1 + l * 11;
        LayerRefs {
            input_norm: self.p(b),
            q: self.p(b + 1),
            k: self.p(b + 2),
            v: self.p(b + 3),
            attn_sub: self.p(b + 4),
            o: self.p(b + 5),
            post_norm: self.p(b + 6),
            gate: self.p(b + 7),
            up: self.p(b + 8),
            ffn_sub: self.p(b + 9),
            down: self.p(b + 10),
        }
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        ops::rms_norm(x, w, self.config.model.norm_eps)
    }

    /// `x [n, in] @ w[out, in]^T` through BitLinear's quantizers (or not).
    fn linear(&self, x: &Tensor, w: &Tensor, mode: ProjMode) -> candle_core::Result<Tensor> {
        match mode {
            ProjMode::B158 => {
                let xq = quant::apply(x, ActQuant)?;
                let wq = quant::apply(w, WeightQuant)?;
                xq.matmul(&wq.t()?)
            }
            ProjMode::Dense => x.matmul(&w.t()?),
            ProjMode::Int4 { group } => {
                let wq = quant::apply(w, Int4GroupQuant { group })?.detach();
                x.matmul(&wq.t()?)
            }
        }
    }

    /// RoPE on `[b, h, t, d]` (rotate-half pairing, as HF LLaMA/BitNet).
    fn rope(&self, x: &Tensor, t: usize) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1(ops::Rope {
            cos: self.rope_cos.clone(),
            sin: self.rope_sin.clone(),
            t,
            inverse: false,
        })
    }

    /// Logits `[b * t, vocab]` for token ids `[b, t]`.
    pub fn forward(&self, ids: &Tensor, mode: ProjMode) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let m = &self.config.model;
        let hd = self.config.head_dim();
        let (nh, nkv) = (m.num_heads, m.num_kv_heads);
        let embed = self.p(0);
        let mut x = embed.index_select(&ids.flatten_all()?, 0)?;
        let scale = 1.0 / (hd as f32).sqrt();
        for l in 0..m.num_layers {
            let w = self.layer(l);
            let h = self.rms_norm(&x, w.input_norm)?;
            let heads = |y: Tensor, n: usize| -> candle_core::Result<Tensor> {
                y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()
            };
            let q = self.rope(&heads(self.linear(&h, w.q, mode)?, nh)?, t)?;
            let k = self.rope(&heads(self.linear(&h, w.k, mode)?, nkv)?, t)?;
            let v = heads(self.linear(&h, w.v, mode)?, nkv)?;
            let (k, v) = if nkv == nh {
                (k, v)
            } else {
                let g = nh / nkv;
                let rep = |y: Tensor| -> candle_core::Result<Tensor> {
                    y.unsqueeze(2)?
                        .broadcast_as((b, nkv, g, t, hd))?
                        .reshape((b, nh, t, hd))
                };
                (rep(k)?, rep(v)?)
            };
            let att = ops::causal_softmax(&q.matmul(&k.t()?)?, scale)?;
            let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b * t, nh * hd))?;
            let o = self.rms_norm(&o, w.attn_sub)?;
            x = (x + self.linear(&o, w.o, mode)?)?;

            let h = self.rms_norm(&x, w.post_norm)?;
            let g = self.linear(&h, w.gate, mode)?;
            let u = self.linear(&h, w.up, mode)?;
            let a = match m.activation {
                Act::Relu2 => g.relu()?.sqr()?,
                Act::Silu => g.silu()?,
            };
            let a = self.rms_norm(&(a * u)?, w.ffn_sub)?;
            x = (x + self.linear(&a, w.down, mode)?)?;
        }
        let n_final = 1 + m.num_layers * 11;
        let x = self.rms_norm(&x, self.p(n_final))?;
        let head = if m.tie_embeddings {
            embed
        } else {
            self.p(n_final + 1)
        };
        x.matmul(&head.t()?)
    }
}

/// Mean cross-entropy (natural log) of `logits [n, v]` against `targets [n]`.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    ops::cross_entropy(logits, targets)
}

pub fn ids_tensor(ids: &[u32], b: usize, t: usize) -> candle_core::Result<Tensor> {
    Tensor::from_vec(ids.to_vec(), (b, t), &Device::Cpu)?.to_dtype(DType::U32)
}
