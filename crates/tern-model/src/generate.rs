//! The generation loop shared by `tern run`, `tern chat` and the server: prefill, then sample
//! and decode one token at a time until a stop token or the budget, streaming each token.

use crate::error::ModelError;
use crate::forward::{Logits, State};
use crate::model::Model;
use crate::sample::Sampler;
use std::time::Instant;
use tern_kernels::ThreadPool;

/// Timings of one generation, llama.cpp style.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub generated: usize,
    pub gen_secs: f64,
    /// Whether generation ended on a stop token (rather than the budget).
    pub stopped: bool,
}

impl GenStats {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_secs.max(1e-12)
    }
    pub fn gen_tps(&self) -> f64 {
        self.generated as f64 / self.gen_secs.max(1e-12)
    }
}

/// What ends generation besides the token budget.
#[derive(Clone, Debug, Default)]
pub struct StopRule {
    pub stop_tokens: Vec<u32>,
    /// Keep generating through stop tokens (benchmarks, `--ignore-eos`).
    pub ignore_stop: bool,
}

/// Reusable buffers of the loop (no allocation per token).
pub struct Generator {
    logits: Vec<f32>,
    recent: Vec<u32>,
}

impl Default for Generator {
    fn default() -> Self {
        Self::new()
    }
}

impl Generator {
    pub fn new() -> Self {
        Generator {
            logits: Vec::new(),
            recent: Vec::new(),
        }
    }

    /// Feeds `prompt` after whatever `state` already holds, then generates up to `max_new`
    /// tokens, calling `on_token` with each (a stop token included: the caller decides whether
    /// to show it). `on_token` returning `false` ends generation early.
    ///
    /// Errors before any work if prompt + budget exceed the state's context.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &mut self,
        model: &Model,
        state: &mut State,
        pool: &ThreadPool,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        stop: &StopRule,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<GenStats, ModelError> {
        if prompt.is_empty() {
            return Err(ModelError::Other(
                "empty prompt: give at least one token".into(),
            ));
        }
        let needed = state.pos() + prompt.len() + max_new;
        if needed > state.capacity() {
            return Err(ModelError::ContextOverflow {
                tokens: state.pos() + prompt.len(),
                generate: max_new,
                context: state.capacity(),
            });
        }
        let mut stats = GenStats {
            prompt_tokens: prompt.len(),
            ..Default::default()
        };
        let window = sampler.config().repeat_last_n;
        self.recent.clear();
        self.recent
            .extend_from_slice(&prompt[prompt.len().saturating_sub(window)..]);

        let t = Instant::now();
        let logits = model.forward(prompt, state, Logits::Last, pool)?;
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        stats.prompt_secs = t.elapsed().as_secs_f64();

        let t = Instant::now();
        for i in 0..max_new {
            let tok = sampler.sample(&mut self.logits, &self.recent);
            stats.generated += 1;
            if self.recent.len() == window && window > 0 {
                self.recent.remove(0);
            }
            if window > 0 {
                self.recent.push(tok);
            }
            let is_stop = !stop.ignore_stop && stop.stop_tokens.contains(&tok);
            let go_on = on_token(tok);
            if is_stop {
                stats.stopped = true;
                break;
            }
            if !go_on || i + 1 == max_new {
                break;
            }
            let logits = model.forward(&[tok], state, Logits::Last, pool)?;
            self.logits.copy_from_slice(logits);
        }
        stats.gen_secs = t.elapsed().as_secs_f64();
        Ok(stats)
    }
}
