//! BitLinear's fake quantizers as candle ops with straight-through backward passes.
//!
//! The forward values are bit-for-bit the ones tern's inference engine computes (the same
//! formulas as `tern_kernels::actquant::quantize_row_portable` and
//! `TernaryMatrix::quantize_absmean`), so a trained model exported to ternary gives the logits
//! the trainer saw. The backward pass is the identity: the straight-through estimator of the
//! BitNet reference code, `x + (q(x) - x).detach()`, done in one pass instead of five tensor
//! ops, and with PyTorch's ties-to-even rounding, which candle's `round` does not offer.

use crate::ops::slice;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use tern_kernels::formats::SCALE_EPS;

/// Per-token (per-row over the last dimension) absmax int8 fake quantization:
/// `s = 127 / max(max|x|, 1e-5)`, `x_q = clamp(round_ties_even(x * s), -128, 127) / s`.
pub struct ActQuant;

/// Per-tensor absmean ternary fake quantization:
/// `s = 1 / max(mean|w|, 1e-5)`, `w_q = clamp(round_ties_even(w * s), -1, 1) / s`.
pub struct WeightQuant;

/// Symmetric per-group 4-bit fake quantization (absmax per group of `group` weights along a
/// row, values in -8..=7 scaled by max/7), the "common practice" post-training baseline.
pub struct Int4GroupQuant {
    pub group: usize,
}

/// Round to nearest, ties to even, for |v| <= 2^22: adding and removing 1.5 * 2^23 leaves
/// the rounding to the FPU's default mode. `f32::round_ties_even` is a libm call (`rintf`)
/// without SSE4.1 at compile time, and was 7% of a training step.
#[inline(always)]
fn round_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Quantizes one row into `out`. Clamping before rounding equals rounding before clamping
/// for integer bounds, and keeps the value in `round_even_small`'s range.
pub fn act_quant_row(x: &[f32], out: &mut [f32]) {
    let amax = x.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    let s = 127.0 / amax.max(SCALE_EPS);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = round_even_small((v * s).clamp(-128.0, 127.0)) / s;
    }
}

/// The absmean scale `s` (f64 mean, as the engine's quantizer) and the fake-quantized values.
pub fn weight_quant_slice(w: &[f32], out: &mut [f32]) {
    let mean = if w.is_empty() {
        0.0
    } else {
        (w.iter().map(|&x| x.abs() as f64).sum::<f64>() / w.len() as f64) as f32
    };
    let s = 1.0 / mean.max(SCALE_EPS);
    for (o, &v) in out.iter_mut().zip(w) {
        *o = round_even_small((v * s).clamp(-1.0, 1.0)) / s;
    }
}

pub fn int4_group_row(x: &[f32], group: usize, out: &mut [f32]) {
    for (xs, os) in x.chunks(group).zip(out.chunks_mut(group)) {
        let amax = xs.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        if amax == 0.0 {
            os.fill(0.0);
            continue;
        }
        let d = amax / 7.0;
        for (o, &v) in os.iter_mut().zip(xs) {
            *o = (v / d).round_ties_even().clamp(-8.0, 7.0) * d;
        }
    }
}

fn row_len(layout: &Layout) -> usize {
    layout.shape().dims().last().copied().unwrap_or(1).max(1)
}

impl CustomOp1 for ActQuant {
    fn name(&self) -> &'static str {
        "bitnet-act-quant"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(self.name(), storage, layout)?;
        let k = row_len(layout);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(k)
            .zip(x.par_chunks(k))
            .with_min_len((8192 / k).max(1))
            .for_each(|(or, xr)| act_quant_row(xr, or));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.clone()))
    }
}

impl CustomOp1 for WeightQuant {
    fn name(&self) -> &'static str {
        "bitnet-weight-quant"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = slice(self.name(), storage, layout)?;
        let mut out = vec![0f32; w.len()];
        weight_quant_slice(w, &mut out);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.clone()))
    }
}

impl CustomOp1 for Int4GroupQuant {
    fn name(&self) -> &'static str {
        "int4-group-quant"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = slice(self.name(), storage, layout)?;
        let k = row_len(layout);
        let mut out = vec![0f32; w.len()];
        for (xr, or) in w.chunks(k).zip(out.chunks_mut(k)) {
            int4_group_row(xr, self.group, or);
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Applies an op to a tensor, making it contiguous first (the ops read raw rows).
pub fn apply(x: &Tensor, op: impl CustomOp1 + Send + Sync + 'static) -> Result<Tensor> {
    x.contiguous()?.apply_op1(op)
}
