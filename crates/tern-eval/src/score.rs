//! Log-likelihood of continuations given contexts, the harness's `loglikelihood` request.
//!
//! [`encode_pair`] tokenizes a request as lm-evaluation-harness's `_encode_pair` does (trailing
//! spaces of the context move to the continuation; the continuation's tokens are those of
//! `context + continuation` after as many tokens as the context alone has; an empty context
//! is the BOS token, else EOS). [`Scorer`] runs them on the engine.
//!
//! **Shared prefixes.** The requests of one document (its choices) usually share their whole
//! context. [`Scorer::score`] runs that common prefix once into a KV cache, copies the cache
//! for every choice ([`KvCache::copy_prefix_from`]) and runs all choices' remaining tokens as
//! one [`Model::forward_batch`] step, several documents at a time. `forward_batch` is
//! batch-invariant (a sequence's logits do not depend on what else is in the step or how its
//! tokens are chunked), so the log-likelihoods are bit-identical to running every request
//! alone from an empty cache ([`Mode::Naive`]); the tests hold them to that.

use crate::error::EvalError;
use tern_kernels::ThreadPool;
use tern_model::forward::Logits;
use tern_model::tokenizer::Tokenizer;
use tern_model::{BatchScratch, KvCache, KvType, Model, SeqInput};

/// A tokenized request: the log-likelihood of `continuation` after `context` is wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// The answer to a [`Request`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// Sum of the continuation tokens' log-probabilities (natural log).
    pub ll: f64,
    /// Whether every continuation token is the argmax of its logits (first index on ties).
    pub greedy: bool,
    /// Continuation tokens scored.
    pub tokens: usize,
}

/// Tokenizes `(context, continuation)` as the harness's `_encode_pair` (causal models), with
/// `prefix` (BOS, else EOS: the harness's `prefix_token_id`) as the context of an empty one.
/// `tok.encode(.., true)` adds BOS exactly when the tokenizer's own settings do, as
/// transformers' `encode` does by default.
pub fn encode_pair(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
    prefix: u32,
) -> Result<Request, EvalError> {
    if context.is_empty() {
        let cont = tok.encode(continuation, false)?;
        return Ok(match cont.first() {
            Some(&t) if t == prefix => Request {
                context: vec![t],
                continuation: cont[1..].to_vec(),
            },
            _ => Request {
                context: vec![prefix],
                continuation: cont,
            },
        });
    }
    let trimmed = context.trim_end_matches(|c: char| c.is_whitespace());
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed,
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context, continuation.to_string())
    };
    let whole = tok.encode(&format!("{context}{continuation}"), true)?;
    let ctx = tok.encode(context, true)?;
    let cont = whole.get(ctx.len()..).unwrap_or(&[]).to_vec();
    Ok(Request {
        context: ctx,
        continuation: cont,
    })
}

/// How [`Scorer::score`] runs requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Each document's common prefix once, its choices as one batch, several documents per
    /// step.
    #[default]
    Shared,
    /// Every request alone from an empty cache, one after another (the baseline).
    Naive,
}

/// Runs requests on a model: KV caches and step buffers, allocated once and reused.
pub struct Scorer<'m> {
    model: &'m Model,
    pool: &'m ThreadPool,
    mode: Mode,
    /// Tokens a request may run (longer ones lose their oldest context tokens, as the
    /// harness truncates to the model's length).
    ctx: usize,
    scratch: BatchScratch,
    caches: Vec<KvCache>,
    kv: KvType,
}

/// One sequence to run: `tokens` into cache `cache`, the rows from `score_from` on scored
/// against `targets`.
struct Job<'a> {
    cache: usize,
    tokens: &'a [u32],
    done: usize,
    score_from: usize,
    targets: &'a [u32],
    out: Option<(usize, usize)>,
}

impl<'m> Scorer<'m> {
    /// A scorer for requests of up to `ctx` tokens (context + continuation - 1), running up to
    /// `max_rows` token rows per step on `threads` threads of `pool`.
    pub fn new(
        model: &'m Model,
        pool: &'m ThreadPool,
        threads: usize,
        kv: KvType,
        ctx: usize,
        max_rows: usize,
        mode: Mode,
    ) -> Result<Scorer<'m>, EvalError> {
        let ctx = ctx.clamp(1, model.config.max_seq_len);
        Ok(Scorer {
            model,
            pool,
            mode,
            ctx,
            scratch: BatchScratch::new(&model.config, ctx, max_rows.max(1), threads)?,
            caches: Vec::new(),
            kv,
        })
    }

    /// The tokens a request runs (context and continuation but the last token, the oldest
    /// dropped past the context length) and the index of its first scored row.
    fn input(&self, r: &Request) -> Result<(Vec<u32>, usize), EvalError> {
        let n = r.continuation.len();
        if n == 0 {
            return Err(EvalError::Other(
                "a request with an empty continuation (nothing to score)".into(),
            ));
        }
        if n > self.ctx {
            return Err(EvalError::Other(format!(
                "a continuation of {n} tokens does not fit the context of {} tokens",
                self.ctx
            )));
        }
        let mut all: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
        all.pop();
        let drop = all.len().saturating_sub(self.ctx);
        let input = all[drop..].to_vec();
        let first = input.len() - n;
        Ok((input, first))
    }

    fn cache(&mut self, i: usize) -> Result<(), EvalError> {
        while self.caches.len() <= i {
            self.caches
                .push(KvCache::with_type(&self.model.config, self.ctx, self.kv)?);
        }
        Ok(())
    }

    /// Scores groups of requests (a group: one document's choices), in order.
    pub fn score(&mut self, groups: &[Vec<Request>]) -> Result<Vec<Vec<Scored>>, EvalError> {
        let mut out: Vec<Vec<Scored>> = groups
            .iter()
            .map(|g| {
                vec![
                    Scored {
                        ll: 0.0,
                        greedy: true,
                        tokens: 0
                    };
                    g.len()
                ]
            })
            .collect();
        let inputs: Vec<Vec<(Vec<u32>, usize)>> = groups
            .iter()
            .map(|g| g.iter().map(|r| self.input(r)).collect())
            .collect::<Result<_, _>>()?;
        match self.mode {
            Mode::Naive => {
                for (gi, g) in groups.iter().enumerate() {
                    for (ri, r) in g.iter().enumerate() {
                        let (tokens, first) = &inputs[gi][ri];
                        self.cache(0)?;
                        self.caches[0].reset();
                        let job = Job {
                            cache: 0,
                            tokens,
                            done: 0,
                            score_from: *first,
                            targets: &r.continuation,
                            out: Some((gi, ri)),
                        };
                        self.run(vec![job], &mut out)?;
                    }
                }
            }
            Mode::Shared => {
                // The longest prefix every request of a group runs, up to the first scored
                // row (which each request must run itself to get its logits).
                let prefix: Vec<usize> = inputs
                    .iter()
                    .map(|g| {
                        let Some((t0, _)) = g.first() else { return 0 };
                        let mut p = g.iter().map(|(_, f)| *f).min().unwrap_or(0);
                        for (t, _) in &g[1..] {
                            p = p.min(t.iter().zip(t0).take_while(|(a, b)| a == b).count());
                        }
                        p
                    })
                    .collect();
                let n_req: usize = groups.iter().map(Vec::len).sum();
                self.cache(groups.len() + n_req)?;
                for c in &mut self.caches {
                    c.reset();
                }
                // The prefixes, cache `gi` for group `gi`.
                let jobs = prefix
                    .iter()
                    .enumerate()
                    .filter(|(_, &p)| p > 0)
                    .map(|(gi, &p)| Job {
                        cache: gi,
                        tokens: &inputs[gi][0].0[..p],
                        done: 0,
                        score_from: p,
                        targets: &[],
                        out: None,
                    })
                    .collect();
                self.run(jobs, &mut out)?;
                // Every request forks its group's prefix and runs the rest.
                let mut jobs = Vec::with_capacity(n_req);
                let mut next = groups.len();
                for (gi, g) in groups.iter().enumerate() {
                    let p = prefix[gi];
                    for (ri, r) in g.iter().enumerate() {
                        let (tokens, first) = &inputs[gi][ri];
                        if p > 0 {
                            let (src, dst) = self.caches.split_at_mut(next);
                            dst[0].copy_prefix_from(&src[gi], p)?;
                        }
                        jobs.push(Job {
                            cache: next,
                            tokens: &tokens[p..],
                            done: 0,
                            score_from: first - p,
                            targets: &r.continuation,
                            out: Some((gi, ri)),
                        });
                        next += 1;
                    }
                }
                self.run(jobs, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Runs `jobs` to the end, as many rows per step as the scratch holds; a chunk never
    /// mixes unscored and scored rows, so unscored rows ask for one logits row only.
    fn run(&mut self, mut jobs: Vec<Job<'_>>, out: &mut [Vec<Scored>]) -> Result<(), EvalError> {
        let v = self.model.config.vocab_size;
        let max_rows = self.scratch.max_rows();
        loop {
            let mut budget = max_rows;
            let mut step: Vec<(usize, usize, usize)> = Vec::new(); // job, start, end
            for (j, job) in jobs.iter().enumerate() {
                if budget == 0 {
                    break;
                }
                let left = job.tokens.len() - job.done;
                if left == 0 {
                    continue;
                }
                let stop = if job.done < job.score_from {
                    job.score_from
                } else {
                    job.tokens.len()
                };
                let n = (stop - job.done).min(budget);
                step.push((j, job.done, job.done + n));
                budget -= n;
            }
            if step.is_empty() {
                return Ok(());
            }
            // `&mut` to each job's cache (distinct per job).
            let mut slots: Vec<Option<&mut KvCache>> = self.caches.iter_mut().map(Some).collect();
            let mut seqs: Vec<SeqInput<'_>> = step
                .iter()
                .map(|&(j, a, b)| {
                    let job = &jobs[j];
                    let tokens: &[u32] = job.tokens;
                    SeqInput {
                        cache: slots[job.cache].take().expect("one job per cache"),
                        tokens: &tokens[a..b],
                        logits: if a >= job.score_from {
                            Logits::All
                        } else {
                            Logits::Last
                        },
                    }
                })
                .collect();
            let logits = self
                .model
                .forward_batch(&mut seqs, &mut self.scratch, self.pool)?;
            for (k, &(j, a, b)) in step.iter().enumerate() {
                let job = &mut jobs[j];
                job.done = b;
                if a < job.score_from {
                    continue;
                }
                let Some((gi, ri)) = job.out else { continue };
                let rows = logits.get(k);
                for (r, row) in (a..b).zip(rows.chunks_exact(v)) {
                    let target = job.targets[r - job.score_from];
                    let (lp, greedy) = log_prob(row, target);
                    let s = &mut out[gi][ri];
                    s.ll += lp;
                    s.greedy &= greedy;
                    s.tokens += 1;
                }
            }
        }
    }
}

/// `log softmax(row)[target]` (in f64) and whether `target` is the row's argmax (the first
/// index of the maximum, as torch's `argmax`).
pub fn log_prob(row: &[f32], target: u32) -> (f64, bool) {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    let max = row[best] as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = sum.ln() + max;
    (row[target as usize] as f64 - lse, best == target as usize)
}
