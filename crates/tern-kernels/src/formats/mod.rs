//! Ternary matrices and the byte layouts they travel in.
//!
//! [`TernaryMatrix`] is the canonical form: `rows x cols` values in {-1, 0, 1}, row-major
//! `[out][in]`, plus one f32 scale `gamma = mean|W|` for the whole tensor (BitNet b1.58 has no
//! per-row or per-group scale). Every layout converts to and from it exactly.
//!
//! Interchange layouts (what other projects write) live here; tern's own compute layouts live
//! next to their kernels in [`crate::ternary`].

pub mod hf;
pub mod i2s;
mod tq;
pub mod tq1_0;
pub mod tq2_0;

use crate::error::KernelError;
use crate::rng::Rng;

/// The error every unpacker gives when `bytes` is not the `expected` size of a `rows x cols`
/// matrix.
fn check_byte_len(
    bytes: &[u8],
    expected: usize,
    rows: usize,
    cols: usize,
    format: &'static str,
) -> Result<(), KernelError> {
    if bytes.len() != expected {
        return Err(KernelError::ByteLength {
            format,
            rows,
            cols,
            expected,
            got: bytes.len(),
        });
    }
    Ok(())
}

/// Ternary weights in plain form: the reference every packed layout round-trips through.
#[derive(Clone, Debug, PartialEq)]
pub struct TernaryMatrix {
    pub rows: usize,
    pub cols: usize,
    /// Row-major `[rows][cols]`, each in {-1, 0, 1}.
    pub values: Vec<i8>,
    /// Dequantization multiplier: weight = value * gamma.
    pub gamma: f32,
}

/// The floor BitNet's reference code puts under mean|W| (and under the activation absmax).
pub const SCALE_EPS: f32 = 1e-5;

impl TernaryMatrix {
    /// Checks the length and that every value is ternary.
    pub fn new(rows: usize, cols: usize, values: Vec<i8>, gamma: f32) -> Result<Self, KernelError> {
        if values.len() != rows * cols {
            return Err(KernelError::Shape {
                format: "ternary",
                what: format!(
                    "{} values for a {rows}x{cols} matrix (expected {})",
                    values.len(),
                    rows * cols
                ),
            });
        }
        if let Some((index, &v)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| !(-1..=1).contains(*v))
        {
            return Err(KernelError::NotTernary {
                format: "ternary",
                index,
                value: v as i32,
            });
        }
        Ok(TernaryMatrix {
            rows,
            cols,
            values,
            gamma,
        })
    }

    /// BitNet b1.58 absmean quantization of latent weights, exactly as the reference code:
    /// `s = 1 / max(mean|W|, 1e-5)`, `q = clamp(round_ties_even(W * s), -1, 1)`, gamma = 1/s.
    ///
    /// The mean is accumulated in f64 so the result does not depend on summation order.
    pub fn quantize_absmean(rows: usize, cols: usize, w: &[f32]) -> Result<Self, KernelError> {
        if w.len() != rows * cols {
            return Err(KernelError::Shape {
                format: "absmean",
                what: format!("{} weights for a {rows}x{cols} matrix", w.len()),
            });
        }
        let mean = if w.is_empty() {
            0.0
        } else {
            (w.iter().map(|&x| x.abs() as f64).sum::<f64>() / w.len() as f64) as f32
        };
        let s = 1.0 / mean.max(SCALE_EPS);
        let values = w
            .iter()
            .map(|&x| (x * s).round_ties_even().clamp(-1.0, 1.0) as i8)
            .collect();
        Ok(TernaryMatrix {
            rows,
            cols,
            values,
            gamma: 1.0 / s,
        })
    }

    /// Random ternary weights (P(0) = 1/3) for tests and synthetic benchmarks.
    pub fn random(rows: usize, cols: usize, gamma: f32, rng: &mut Rng) -> Self {
        let values = (0..rows * cols).map(|_| rng.trit()).collect();
        TernaryMatrix {
            rows,
            cols,
            values,
            gamma,
        }
    }

    /// Checks a matrix about to be packed as `format`: `TernaryMatrix` has public fields, so a
    /// hand-built one may be inconsistent.
    pub(crate) fn check(&self, format: &'static str) -> Result<(), KernelError> {
        if self.rows.checked_mul(self.cols) != Some(self.values.len()) {
            return Err(KernelError::Shape {
                format,
                what: format!(
                    "{} values for a {}x{} matrix",
                    self.values.len(),
                    self.rows,
                    self.cols
                ),
            });
        }
        match self.values.iter().position(|v| !(-1..=1).contains(v)) {
            Some(index) => Err(KernelError::NotTernary {
                format,
                index,
                value: self.values[index] as i32,
            }),
            None => Ok(()),
        }
    }

    pub fn row(&self, r: usize) -> &[i8] {
        &self.values[r * self.cols..(r + 1) * self.cols]
    }

    /// Dequantized f32 weights (value * gamma), row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32 * self.gamma).collect()
    }
}
