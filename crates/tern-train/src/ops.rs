//! Fused training ops with hand-written backward passes: RMSNorm, RoPE, causal softmax and
//! cross-entropy. Composed from candle's elementwise primitives each of these is 5-10 passes
//! over memory forward and as many backward, which dominated the step time of small models
//! (measured: docs/training.md). Each op is checked against its composed form in the tests.
//!
//! All ops take and return contiguous f32 tensors; rows are processed in parallel with rayon
//! (candle's own pool).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// The f32 data of a contiguous tensor's storage (custom ops read raw rows).
pub(crate) fn slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let d = match s {
        CpuStorage::F32(d) => d,
        _ => candle_core::bail!("{op}: expected f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&d[a..b]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

fn data(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Rows per rayon task: enough work per task to amortise scheduling.
fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

// ---------------------------------------------------------------------------------------
// RMSNorm: y = x * r * w, r = 1 / sqrt(mean(x^2) + eps), over the last dimension.

pub struct RmsNorm {
    pub eps: f32,
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(self.name(), s1, l1)?;
        let w = slice(self.name(), s2, l2)?;
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        let rpt = rows_per_task(d);
        y.par_chunks_mut(d * rpt)
            .zip(x.par_chunks(d * rpt))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                    let r = inv_rms(xr, self.eps);
                    for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                        *o = v * r * g;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (xv, wv, gv) = (data(x)?, data(w)?, data(grad)?);
        let d = wv.len();
        let rpt = rows_per_task(d);
        let mut dx = vec![0f32; xv.len()];
        let dw_parts: Vec<Vec<f32>> = dx
            .par_chunks_mut(d * rpt)
            .zip(xv.par_chunks(d * rpt).zip(gv.par_chunks(d * rpt)))
            .map(|(dxc, (xc, gc))| {
                let mut dw = vec![0f32; d];
                for ((dxr, xr), gr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                    let r = inv_rms(xr, self.eps);
                    // dy/dx = r * (g*w - xhat * mean(g*w*xhat)), xhat = x * r.
                    let mut dot = 0f32;
                    for i in 0..d {
                        let xhat = xr[i] * r;
                        dw[i] += gr[i] * xhat;
                        dot += gr[i] * wv[i] * xhat;
                    }
                    let mean = dot / d as f32;
                    for i in 0..d {
                        dxr[i] = r * (gr[i] * wv[i] - xr[i] * r * mean);
                    }
                }
                dw
            })
            .collect();
        let mut dw = vec![0f32; d];
        for p in dw_parts {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?),
            Some(Tensor::from_vec(dw, w.shape(), &Device::Cpu)?),
        ))
    }
}

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

// ---------------------------------------------------------------------------------------
// RoPE (rotate-half pairing) on [b, h, t, d] with position = row index mod t.

pub struct Rope {
    pub cos: Arc<Vec<f32>>,
    pub sin: Arc<Vec<f32>>,
    pub t: usize,
    /// Backward is the rotation by the negative angle.
    pub inverse: bool,
}

impl Rope {
    fn rotate(&self, x: &[f32], d: usize) -> Vec<f32> {
        let h = d / 2;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        let rpt = rows_per_task(d);
        y.par_chunks_mut(d * rpt)
            .zip(x.par_chunks(d * rpt))
            .enumerate()
            .for_each(|(ci, (yc, xc))| {
                for (ri, (yr, xr)) in yc.chunks_mut(d).zip(xc.chunks(d)).enumerate() {
                    let pos = (ci * rpt + ri) % self.t;
                    let (c, s) = (&self.cos[pos * h..], &self.sin[pos * h..]);
                    for i in 0..h {
                        let (a, b) = (xr[i], xr[i + h]);
                        let sn = sign * s[i];
                        yr[i] = a * c[i] - b * sn;
                        yr[i + h] = b * c[i] + a * sn;
                    }
                }
            });
        y
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(self.name(), s, l)?;
        let d = l.shape().dims().last().copied().unwrap_or(1);
        Ok((CpuStorage::F32(self.rotate(x, d)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inv = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            t: self.t,
            inverse: !self.inverse,
        };
        let d = x.dims().last().copied().unwrap_or(1);
        let g = data(grad)?;
        Ok(Some(Tensor::from_vec(
            inv.rotate(&g, d),
            x.shape(),
            &Device::Cpu,
        )?))
    }
}

/// Per-position `cos`/`sin` tables of `d / 2` entries each (f32 arithmetic as transformers).
pub fn rope_tables(n: usize, d: usize, theta: f32) -> (Arc<Vec<f32>>, Arc<Vec<f32>>) {
    let h = d / 2;
    let inv: Vec<f32> = (0..h)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
        .collect();
    let mut cos = Vec::with_capacity(n * h);
    let mut sin = Vec::with_capacity(n * h);
    for p in 0..n {
        for &f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (Arc::new(cos), Arc::new(sin))
}

// ---------------------------------------------------------------------------------------
// Causal softmax of `scale * x` over the last dimension of [.., t, t]: row i keeps 0..=i.

pub struct CausalSoftmax {
    pub t: usize,
    pub scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(self.name(), s, l)?;
        let t = self.t;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(t * t)
            .zip(x.par_chunks(t * t))
            .for_each(|(ym, xm)| {
                for i in 0..t {
                    let xr = &xm[i * t..i * t + i + 1];
                    let yr = &mut ym[i * t..i * t + i + 1];
                    let max = xr.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * self.scale;
                    let mut sum = 0f32;
                    for (o, &v) in yr.iter_mut().zip(xr) {
                        *o = (v * self.scale - max).exp();
                        sum += *o;
                    }
                    let inv = 1.0 / sum;
                    yr.iter_mut().for_each(|o| *o *= inv);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (y, g) = (data(res)?, data(grad)?);
        let t = self.t;
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(t * t)
            .zip(y.par_chunks(t * t).zip(g.par_chunks(t * t)))
            .for_each(|(dm, (ym, gm))| {
                for i in 0..t {
                    let r = i * t..i * t + i + 1;
                    let dot: f32 = ym[r.clone()]
                        .iter()
                        .zip(&gm[r.clone()])
                        .map(|(a, b)| a * b)
                        .sum();
                    for j in r {
                        dm[j] = self.scale * ym[j] * (gm[j] - dot);
                    }
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?))
    }
}

pub fn causal_softmax(x: &Tensor, scale: f32) -> Result<Tensor> {
    let t = x.dims().last().copied().unwrap_or(1);
    x.contiguous()?.apply_op1(CausalSoftmax { t, scale })
}

// ---------------------------------------------------------------------------------------
// Cross-entropy per row: loss_r = logsumexp(x_r) - x_r[target_r].

pub struct CrossEntropy {
    pub targets: Arc<Vec<u32>>,
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(self.name(), s, l)?;
        let v = l.shape().dims().last().copied().unwrap_or(1);
        let n = x.len() / v;
        if self.targets.len() != n {
            candle_core::bail!("cross-entropy: {} targets for {n} rows", self.targets.len());
        }
        if let Some(&bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("cross-entropy: target {bad} outside the vocabulary ({v})");
        }
        let loss: Vec<f32> = x
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(r, &tgt)| {
                let max = r.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a));
                let sum: f32 = r.iter().map(|&a| (a - max).exp()).sum();
                sum.ln() + max - r[tgt as usize]
            })
            .collect();
        Ok((CpuStorage::F32(loss), Shape::from(n)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (xv, g) = (data(x)?, data(grad)?);
        let v = x.dims().last().copied().unwrap_or(1);
        let mut dx = vec![0f32; xv.len()];
        dx.par_chunks_mut(v)
            .zip(xv.par_chunks(v))
            .zip(self.targets.par_iter().zip(g.par_iter()))
            .for_each(|((dr, r), (&tgt, &gr))| {
                let max = r.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a));
                let mut sum = 0f32;
                for (o, &a) in dr.iter_mut().zip(r) {
                    *o = (a - max).exp();
                    sum += *o;
                }
                let k = gr / sum;
                dr.iter_mut().for_each(|o| *o *= k);
                dr[tgt as usize] -= gr;
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?))
    }
}

/// Mean cross-entropy (nats) of `logits [n, v]` against `targets`.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op1(CrossEntropy {
            targets: Arc::new(targets.to_vec()),
        })?
        .mean_all()
}
