//! Training speed: model FLOPs utilisation against this machine's measured f32 GEMM rate,
//! and the cost of BitNet's quantizers (a b1.58 step vs the FP step of the same shape).
//!
//! FLOPs per token follow the usual accounting: 6 x (projection + head parameters) for the
//! matmuls forward and backward, plus 12 x layers x seq_len x (heads x head_dim) for the
//! attention scores and mixing (forward 4, backward 8; causal masking not discounted).

use crate::optim::AdamW;
use crate::recipe::{Config, Quant};
use crate::transformer::{cross_entropy, ids_tensor, Model};
use candle_core::{Device, Tensor};
use std::time::Instant;
use tern_kernels::rng::Rng;

#[derive(Clone, Debug)]
pub struct StepTiming {
    pub quant: Quant,
    /// Median seconds per optimizer step.
    pub step_s: f64,
    pub tokens_per_s: f64,
    pub gflops: f64,
}

#[derive(Clone, Debug)]
pub struct BenchReport {
    pub params: usize,
    pub flops_per_token: f64,
    /// Median f32 GEMM rate of candle's matmul on the model's FFN shape, GFLOP/s.
    pub gemm_gflops: f64,
    pub b158: StepTiming,
    pub fp: StepTiming,
}

pub fn flops_per_token(c: &Config, vocab: usize) -> f64 {
    let m = &c.model;
    let hd = c.head_dim();
    let d = m.hidden_size;
    let per_layer =
        d * m.num_heads * hd * 2 + 2 * d * m.num_kv_heads * hd + 3 * d * m.intermediate_size;
    let matmul_params = m.num_layers * per_layer + vocab * d;
    6.0 * matmul_params as f64 + 12.0 * (m.num_layers * c.train.seq_len * m.num_heads * hd) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// GFLOP/s of `[n, k] x [k, m]` f32 matmuls through candle (the `gemm` crate).
pub fn gemm_rate(n: usize, k: usize, m: usize, reps: usize) -> candle_core::Result<f64> {
    let mut rng = Rng::new(1);
    let a: Vec<f32> = (0..n * k).map(|_| rng.unit_f32()).collect();
    let b: Vec<f32> = (0..k * m).map(|_| rng.unit_f32()).collect();
    let a = Tensor::from_vec(a, (n, k), &Device::Cpu)?;
    let b = Tensor::from_vec(b, (k, m), &Device::Cpu)?;
    let _ = a.matmul(&b)?;
    let mut times = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        drop(c);
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * k * m) as f64 / median(times) / 1e9)
}

fn time_steps(
    c: &Config,
    vocab: usize,
    quant: Quant,
    steps: usize,
) -> candle_core::Result<StepTiming> {
    let mut c = c.clone();
    c.model.quant = quant;
    let model = Model::init(&c, vocab)?;
    let mut opt = AdamW::new(&model.params, 0.9, 0.95, 1e-8)?;
    let decay = vec![true; model.params.len()];
    let (b, t) = (c.train.batch_size, c.train.seq_len);
    let mut rng = Rng::new(2);
    let mut times = Vec::new();
    for i in 0..steps + 1 {
        let x: Vec<u32> = (0..b * t).map(|_| rng.below(vocab as u64) as u32).collect();
        let y: Vec<u32> = (0..b * t).map(|_| rng.below(vocab as u64) as u32).collect();
        let t0 = Instant::now();
        let loss = cross_entropy(&model.forward(&ids_tensor(&x, b, t)?, quant.into())?, &y)?;
        let grads = loss.backward()?;
        opt.step(&model.params, &grads, 1e-3, 0.1, &decay, 1.0)?;
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let step_s = median(times);
    let tokens = (b * t) as f64;
    Ok(StepTiming {
        quant,
        step_s,
        tokens_per_s: tokens / step_s,
        gflops: flops_per_token(&c, vocab) * tokens / step_s / 1e9,
    })
}

/// Times `steps` optimizer steps (after one warm-up) of the b1.58 model and of its FP
/// twin on random tokens, and the GEMM rate on the FFN up-projection shape.
pub fn run(c: &Config, vocab: usize, steps: usize) -> candle_core::Result<BenchReport> {
    let n = c.train.batch_size * c.train.seq_len;
    let gemm_gflops = gemm_rate(n, c.model.hidden_size, c.model.intermediate_size, 7)?;
    let b158 = time_steps(c, vocab, Quant::B158, steps)?;
    let fp = time_steps(c, vocab, Quant::None, steps)?;
    let params = Model::init(c, vocab)?.num_params();
    Ok(BenchReport {
        params,
        flops_per_token: flops_per_token(c, vocab),
        gemm_gflops,
        b158,
        fp,
    })
}
