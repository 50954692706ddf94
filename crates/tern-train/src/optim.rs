//! AdamW (decoupled weight decay, PyTorch's formulation) with its state exposed, so that a
//! checkpoint holds everything needed to resume bit-exactly, plus global-norm clipping.

use candle_core::{backprop::GradStore, Result, Tensor, Var};

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps taken so far (bias correction uses `t + 1` for the next one).
    pub t: u64,
    /// First and second moments, in parameter order.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(params: &[(String, Var)], beta1: f64, beta2: f64, eps: f64) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(AdamW {
            beta1,
            beta2,
            eps,
            t: 0,
            m: params
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<Result<_>>()?,
            v: params
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<Result<_>>()?,
        })
    }

    /// One update. `decay[i]` says whether parameter `i` gets weight decay; `grad_scale`
    /// multiplies every gradient (clipping).
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &GradStore,
        lr: f64,
        weight_decay: f64,
        decay: &[bool],
        grad_scale: f64,
    ) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, (name, var)) in params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                candle_core::bail!("no gradient for parameter {name}");
            };
            let g = (g * grad_scale)?;
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let update = ((&m / bc1)? / denom)?;
            let w = var.as_tensor();
            let w = if decay[i] && weight_decay > 0.0 {
                (w * (1.0 - lr * weight_decay))?
            } else {
                w.clone()
            };
            var.set(&(w - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// The global L2 norm of all gradients (f64 accumulation).
pub fn grad_norm(params: &[(String, Var)], grads: &GradStore) -> Result<f64> {
    let mut sum = 0f64;
    for (_, var) in params {
        if let Some(g) = grads.get(var.as_tensor()) {
            sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    Ok(sum.sqrt())
}
