//! lm-evaluation-harness's metrics and standard errors (`lm_eval/api/metrics.py`,
//! `ConfigurableTask.process_results`).

use crate::score::Scored;
use crate::task::{Doc, Kind, TaskSpec};

/// A document's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    /// Index of the highest log-likelihood (first on ties, as `np.argmax`).
    pub pred: usize,
    /// Index of the highest log-likelihood per character of the choice.
    pub pred_norm: usize,
    /// `acc`: 1 or 0 (LAMBADA: whether the answer is the greedy continuation).
    pub acc: f64,
    /// `acc_norm`: 1 or 0, for the tasks that report it.
    pub acc_norm: Option<f64>,
}

/// First index of the maximum (`np.argmax`).
fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in xs.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// The harness's per-document metrics from the log-likelihoods of the document's requests.
/// `acc_norm` divides each log-likelihood by the choice's length in characters (Python's
/// `len` of `doc_to_choice`, not bytes and not the continuation with its delimiter).
pub fn judge(spec: &TaskSpec, doc: &Doc, scored: &[Scored]) -> Judged {
    match spec.kind {
        Kind::Loglikelihood => Judged {
            pred: 0,
            pred_norm: 0,
            acc: scored[0].greedy as u8 as f64,
            acc_norm: None,
        },
        Kind::MultipleChoice { norm } => {
            let pred = argmax(scored.iter().map(|s| s.ll));
            let pred_norm = argmax(
                scored
                    .iter()
                    .zip(&doc.choices)
                    .map(|(s, c)| s.ll / c.chars().count() as f64),
            );
            Judged {
                pred,
                pred_norm,
                acc: (pred == doc.gold) as u8 as f64,
                acc_norm: norm.then_some((pred_norm == doc.gold) as u8 as f64),
            }
        }
    }
}

/// A metric over a task and its standard error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metric {
    pub value: f64,
    pub stderr: f64,
}

/// The mean and the harness's `mean_stderr`: sample standard deviation (n - 1) / sqrt(n).
pub fn mean_with_stderr(xs: &[f64]) -> Metric {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    Metric {
        value: mean,
        stderr: sample_stddev(xs, mean) / n.sqrt(),
    }
}

fn sample_stddev(xs: &[f64], mean: f64) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return f64::NAN;
    }
    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// The harness's `perplexity` aggregation, `exp(-mean(ll))`, with its standard error as the
/// harness computes it: the sample standard deviation of the perplexities of `iters`
/// bootstrap resamples (`bootstrap_stderr`; 100000 resamples by default there). The resamples
/// come from tern's generator seeded with `seed`, so the error matches the harness's in
/// distribution, not digit for digit.
pub fn perplexity_with_stderr(lls: &[f64], iters: usize, seed: u64) -> Metric {
    let n = lls.len();
    let ppl = |mean_ll: f64| (-mean_ll).exp();
    let value = ppl(lls.iter().sum::<f64>() / n as f64);
    if iters < 2 || n == 0 {
        return Metric {
            value,
            stderr: f64::NAN,
        };
    }
    let mut rng = tern_kernels::rng::Rng::new(seed);
    let samples: Vec<f64> = (0..iters)
        .map(|_| {
            let s: f64 = (0..n).map(|_| lls[rng.below(n as u64) as usize]).sum();
            ppl(s / n as f64)
        })
        .collect();
    let mean = samples.iter().sum::<f64>() / iters as f64;
    Metric {
        value,
        stderr: sample_stddev(&samples, mean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_the_harness_formula() {
        // numpy: np.std([1,0,1,1], ddof=1) / 2 = 0.25
        let m = mean_with_stderr(&[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(m.value, 0.75);
        assert!((m.stderr - 0.25).abs() < 1e-12);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax([1.0, 3.0, 3.0].into_iter()), 1);
    }

    #[test]
    fn bootstrap_of_a_constant_has_no_spread() {
        let m = perplexity_with_stderr(&[-2.0; 10], 100, 1);
        assert!((m.value - 2f64.exp()).abs() < 1e-12);
        assert!(m.stderr.abs() < 1e-9);
    }
}
