//! One engine thread per model: it owns the model's [`Session`] (weights and thread pool) and
//! serves jobs from a bounded queue with continuous batching.
//!
//! Up to `parallel` sequences are active, each with its own sampler and its own [`KvCache`]
//! sized for its prompt plus its `max_tokens` (TGI's reservation: no sequence ever runs out of
//! cache mid-generation), all within the model's KV budget: a request that does not fit waits
//! at the head of the queue until finished sequences give memory back. Caches are reused from
//! a free list (dropped, largest first, when a new one needs their memory). Every round is **one** batched forward step
//! ([`tern_model::Model::forward_batch`]): the last token of every decoding sequence and the
//! next chunk of every prefilling prompt go through each projection as one ternary GEMM, so
//! the weights are read once per step, not once per sequence; a long prompt is prefilled in
//! chunks of the step's row budget between the others' tokens. The step is batch-invariant
//! (each row's logits are bit-identical to the sequence run alone), so a request's greedy
//! output equals `tern run`'s whatever else is being served.
//!
//! A new request joins at the next round; a finished or cancelled one (its client gone) frees
//! its cache before the next step.

use crate::error::ApiError;
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;
use tern_model::chat::ChatTemplate;
use tern_model::forward::Logits;
use tern_model::load::Loaded;
use tern_model::sample::{Sampler, SamplerConfig};
use tern_model::{BatchScratch, KvCache, KvType, SeqInput, Session, State};
use tokio::sync::mpsc::UnboundedSender;

/// Why a generation ended, as OpenAI's `finish_reason` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A stop token (or, decided by the caller, a stop string).
    Stop,
    /// `max_tokens` reached or the context full.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// A sampled token's log-probability under the model (log-softmax of the raw logits: before
/// penalties, temperature and truncation, as vLLM reports by default), and the `top` most
/// likely tokens with theirs, most likely first.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What the engine sends back for a job.
#[derive(Debug)]
pub enum Event {
    /// A generated token (stop tokens are not sent: they end the sequence), with its
    /// log-probability when the job asked for them.
    Token(u32, Option<TokenLogprob>),
    /// The end; `generated` counts every sampled token, the stop token included.
    Done {
        finish: Finish,
        generated: usize,
    },
    Error(String),
}

/// One request as the engine sees it: tokens in, tokens out through `events`. Dropping the
/// receiver of `events` cancels the job at its next token.
pub struct Job {
    pub prompt: Vec<u32>,
    /// Already capped so that prompt + generated fit in the context.
    pub max_new: usize,
    pub sampling: SamplerConfig,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub ignore_eos: bool,
    /// Send each token's log-probability and this many top alternatives (`None`: none).
    pub logprobs: Option<usize>,
    pub events: UnboundedSender<Event>,
    /// When the request arrived (time to first token counts from here).
    pub arrived: Instant,
}

/// The server side of a model: what request handlers need without touching the engine.
pub struct EngineHandle {
    pub name: String,
    pub loaded: Arc<Loaded>,
    pub template: ChatTemplate,
    /// Tokens per sequence (prompt + generated).
    pub ctx: usize,
    /// Element type of the KV caches.
    pub kv_type: KvType,
    /// Bytes the KV caches of the active sequences may hold together.
    pub kv_budget: usize,
    queue: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl EngineHandle {
    /// Bytes of the KV cache a sequence of up to `tokens` tokens (prompt + generated) takes.
    pub fn kv_bytes(&self, tokens: usize) -> usize {
        let capacity = cache_tokens(tokens, self.ctx);
        KvCache::bytes_for(&self.loaded.model.config, capacity, self.kv_type)
    }

    /// Queues `job`, or says 429 when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        // Counted before the send: the engine may take the job (and decrement) at once.
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        let r = self.queue.try_send(job);
        if r.is_err() {
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
        }
        match r {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ApiError::queue_full(&self.name)),
            Err(TrySendError::Disconnected(_)) => {
                Err(ApiError::internal("the model's engine has stopped"))
            }
        }
    }
}

/// Capacity of the cache for a sequence of `tokens` tokens: rounded up to a multiple of 64, so
/// that freed caches fit later sequences of about the same size; at most `ctx`.
fn cache_tokens(tokens: usize, ctx: usize) -> usize {
    tokens.max(1).div_ceil(64).saturating_mul(64).min(ctx)
}

/// How an engine runs: sequences at once, waiting jobs, KV budget (bytes; 0 = `parallel`
/// full-context caches), token rows per step (decodes first, then prompt chunks; at least
/// `parallel`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub parallel: usize,
    pub max_queue: usize,
    pub kv_budget: usize,
    pub step_tokens: usize,
}

/// Starts the engine thread of `session` (its KV type is the session's), named `name`.
pub fn spawn(
    name: String,
    mut session: Session,
    limits: Limits,
    metrics: Arc<Metrics>,
) -> std::io::Result<EngineHandle> {
    let (tx, rx) = sync_channel(limits.max_queue);
    let template = std::mem::replace(&mut session.template, ChatTemplate::bitnet_2b4t());
    let ctx = session.state.capacity();
    let parallel = limits.parallel.max(1);
    let kv_type = session.kv_type();
    let kv_budget = if limits.kv_budget == 0 {
        parallel.saturating_mul(KvCache::bytes_for(
            &session.loaded.model.config,
            ctx,
            kv_type,
        ))
    } else {
        limits.kv_budget
    };
    metrics.kv_budget_bytes.fetch_add(kv_budget as i64, Relaxed);
    let handle = EngineHandle {
        name: name.clone(),
        loaded: session.loaded.clone(),
        template,
        ctx,
        kv_type,
        kv_budget,
        queue: tx,
        metrics: metrics.clone(),
    };
    std::thread::Builder::new()
        .name(format!("engine-{name}"))
        .spawn(move || {
            let mut e = Engine {
                scratch: None,
                free: Vec::new(),
                active: Vec::new(),
                pending: None,
                parallel,
                ctx,
                kv_type,
                kv_budget,
                kv_active: 0,
                max_rows: limits.step_tokens.max(parallel).max(1),
                metrics,
                session,
            };
            e.run(rx)
        })?;
    Ok(handle)
}

struct Engine {
    session: Session,
    /// Shared scratch of the batched step.
    scratch: Option<BatchScratch>,
    /// Reset KV caches ready for a new sequence.
    free: Vec<KvCache>,
    active: Vec<Seq>,
    /// The job at the head of the queue, taken but waiting for KV memory.
    pending: Option<Job>,
    parallel: usize,
    ctx: usize,
    kv_type: KvType,
    kv_budget: usize,
    /// Bytes of the active sequences' caches.
    kv_active: usize,
    max_rows: usize,
    metrics: Arc<Metrics>,
}

/// One active sequence.
struct Seq {
    job: Job,
    cache: KvCache,
    sampler: Sampler,
    logits: Vec<f32>,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Sampled tokens so far.
    generated: usize,
    /// The last sampled token, to feed next (`None` while the prompt runs).
    last: Option<u32>,
    /// How often each token was generated (frequency/presence penalties).
    counts: HashMap<u32, u32>,
    /// When the last token was sampled (inter-token latency).
    last_at: Option<Instant>,
    /// The raw logits, when the job asked for log-probabilities.
    logprobs: LogSoftmax,
}

impl Engine {
    fn run(&mut self, rx: Receiver<Job>) {
        // The session's own state is not used: sequences get KV caches of their own.
        self.session.state =
            State::new(&self.session.loaded.model.config, 1, 1, 1).expect("a one-token state");
        loop {
            if !self.admit(&rx) {
                return;
            }
            self.round();
        }
    }

    /// Takes queued jobs while there are slots and KV memory for them; blocks when nothing is
    /// active. `false` once the queue is closed and nothing is left to run.
    fn admit(&mut self, rx: &Receiver<Job>) -> bool {
        while self.active.len() < self.parallel {
            let job = match self.pending.take() {
                Some(j) => j,
                None if self.active.is_empty() => match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return false,
                },
                None => match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                },
            };
            if job.events.is_closed() {
                self.metrics.queue_depth.fetch_sub(1, Relaxed);
                self.metrics.cancelled.fetch_add(1, Relaxed);
                continue;
            }
            let tokens = cache_tokens(job.prompt.len() + job.max_new, self.ctx);
            let need = KvCache::bytes_for(&self.session.loaded.model.config, tokens, self.kv_type);
            if job.prompt.is_empty() || need > self.kv_budget {
                // The handlers refuse both; a job that slips through still gets an answer.
                self.metrics.queue_depth.fetch_sub(1, Relaxed);
                let _ = job.events.send(Event::Error(format!(
                    "the request needs {need} bytes of KV cache; the budget is {}",
                    self.kv_budget
                )));
                continue;
            }
            if self.kv_active + need > self.kv_budget {
                // First come, first served: it waits at the head until memory is given back.
                self.pending = Some(job);
                break;
            }
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            let cache = self.take_cache(tokens, need);
            let scratch = match self.scratch.take() {
                Some(s) => Ok(s),
                None => self.session.new_batch_scratch(self.ctx, self.max_rows),
            };
            let (cache, scratch) = match (cache, scratch) {
                (Ok(c), Ok(s)) => (c, s),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = job.events.send(Event::Error(format!("no KV cache: {e}")));
                    continue;
                }
            };
            self.scratch = Some(scratch);
            self.kv_active += cache.bytes();
            self.metrics
                .kv_used_bytes
                .fetch_add(cache.bytes() as i64, Relaxed);
            self.metrics.active_sequences.fetch_add(1, Relaxed);
            self.active.push(Seq {
                sampler: Sampler::new(job.sampling.clone()),
                job,
                cache,
                logits: Vec::new(),
                prefilled: 0,
                generated: 0,
                last: None,
                counts: HashMap::new(),
                last_at: None,
                logprobs: LogSoftmax::default(),
            });
        }
        true
    }

    /// A cache of at least `tokens` positions (`need` bytes, which fit the budget beside the
    /// active ones): the smallest free one that fits in the budget, else a new one, after
    /// dropping free caches (largest first) until active, free and new fit together.
    fn take_cache(
        &mut self,
        tokens: usize,
        need: usize,
    ) -> Result<KvCache, tern_model::ModelError> {
        let room = self.kv_budget - self.kv_active;
        let best = (0..self.free.len())
            .filter(|&i| self.free[i].capacity() >= tokens && self.free[i].bytes() <= room)
            .min_by_key(|&i| self.free[i].capacity());
        if let Some(i) = best {
            return Ok(self.free.swap_remove(i));
        }
        self.free.sort_by_key(|c| c.capacity());
        while self.kv_active + self.free.iter().map(KvCache::bytes).sum::<usize>() + need
            > self.kv_budget
        {
            if self.free.pop().is_none() {
                break;
            }
        }
        self.session.new_kv_cache(tokens)
    }

    /// One batched forward step over every active sequence (each decoding sequence's last
    /// token, and the next chunk of each prefilling sequence's prompt, as one set of
    /// projections), then one sampled token for every sequence whose prompt is done.
    /// Finished and cancelled sequences give their cache back.
    fn round(&mut self) {
        // Cancelled requests leave before the step: their slot is free at once.
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].job.events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Relaxed);
                self.finish(i, true);
            } else {
                i += 1;
            }
        }
        if self.active.is_empty() {
            return;
        }
        let Some(scratch) = self.scratch.as_mut() else {
            return;
        };
        // Decoders first (one row each), then prompt chunks in arrival order.
        let decoding = self.active.iter().filter(|s| s.last.is_some()).count();
        let mut budget = self.max_rows.saturating_sub(decoding).max(1);
        let mut inputs = Vec::with_capacity(self.active.len());
        let mut samples = Vec::with_capacity(self.active.len());
        for s in self.active.iter_mut() {
            let Seq {
                cache,
                job,
                last,
                prefilled,
                ..
            } = s;
            let decodes = last.is_some();
            let tokens: &[u32] = match &*last {
                Some(t) => std::slice::from_ref(t),
                None => {
                    let n = (job.prompt.len() - *prefilled).min(budget);
                    budget -= n;
                    &job.prompt[*prefilled..*prefilled + n]
                }
            };
            // A sequence samples after this step when it decodes or its prompt completes.
            samples.push(
                !tokens.is_empty() && (decodes || *prefilled + tokens.len() == job.prompt.len()),
            );
            if !decodes {
                *prefilled += tokens.len();
            }
            inputs.push(SeqInput {
                cache,
                tokens,
                logits: Logits::Last,
            });
        }
        let (model, pool) = (&self.session.loaded.model, &self.session.pool);
        // A panic in the step (a bug) ends the requests in it, not the server.
        let result = catch_unwind(AssertUnwindSafe(move || {
            // Moved in whole, so the logits may borrow the scratch past the closure.
            let (mut inputs, scratch) = (inputs, scratch);
            model.forward_batch(&mut inputs, scratch, pool)
        }));
        let logits = match result {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return self.fail_all(&e.to_string(), true),
            Err(_) => return self.fail_all("internal error in the engine", false),
        };
        // Into each sampling sequence's own buffer (reused: no allocation per token).
        for (k, seq) in self.active.iter_mut().enumerate() {
            if samples[k] {
                seq.logits.clear();
                seq.logits.extend_from_slice(logits.get(k));
            }
        }
        let loaded = self.session.loaded.clone();
        let mut i = 0;
        for sample in samples {
            if !sample {
                i += 1;
                continue;
            }
            match self.active[i].sample_and_send(&loaded, &self.metrics) {
                Step::Continue => i += 1,
                Step::Done => self.finish(i, true),
                Step::Cancelled => {
                    self.metrics.cancelled.fetch_add(1, Relaxed);
                    self.finish(i, true);
                }
            }
        }
    }

    /// Removes sequence `i`, returning its cache to the free list when it can be reused.
    fn finish(&mut self, i: usize, reuse: bool) {
        let mut seq = self.active.remove(i);
        self.metrics.active_sequences.fetch_sub(1, Relaxed);
        self.kv_active -= seq.cache.bytes();
        self.metrics
            .kv_used_bytes
            .fetch_sub(seq.cache.bytes() as i64, Relaxed);
        if reuse {
            seq.cache.reset();
            self.free.push(seq.cache);
        }
    }

    /// Ends every active sequence with `message` (a step that failed as a whole).
    fn fail_all(&mut self, message: &str, reuse: bool) {
        while !self.active.is_empty() {
            let _ = self.active[0]
                .job
                .events
                .send(Event::Error(message.to_string()));
            self.finish(0, reuse);
        }
    }
}

enum Step {
    Continue,
    Done,
    Cancelled,
}

impl Seq {
    /// Samples the next token from `self.logits` and sends it.
    fn sample_and_send(&mut self, loaded: &Loaded, metrics: &Metrics) -> Step {
        if self.job.logprobs.is_some() {
            self.logprobs.keep(&self.logits);
        }
        self.apply_penalties();
        let tok = self.sampler.sample(&mut self.logits, &[]);
        let lp = self.job.logprobs.map(|top| self.logprobs.of(tok, top));
        let now = Instant::now();
        match self.last_at {
            None => metrics.ttft.observe(now - self.job.arrived),
            Some(t) => metrics.itl.observe(now - t),
        }
        self.last_at = Some(now);
        self.generated += 1;
        metrics.completion_tokens.fetch_add(1, Relaxed);
        *self.counts.entry(tok).or_default() += 1;
        let done = |finish| Event::Done {
            finish,
            generated: self.generated,
        };
        if !self.job.ignore_eos && loaded.stop_tokens.contains(&tok) {
            let _ = self.job.events.send(done(Finish::Stop));
            return Step::Done;
        }
        if self.job.events.send(Event::Token(tok, lp)).is_err() {
            return Step::Cancelled;
        }
        if self.generated >= self.job.max_new {
            let _ = self.job.events.send(done(Finish::Length));
            return Step::Done;
        }
        self.last = Some(tok);
        Step::Continue
    }

    /// OpenAI's penalties, on the tokens generated so far:
    /// `logit[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)`.
    fn apply_penalties(&mut self) {
        let (f, p) = (self.job.frequency_penalty, self.job.presence_penalty);
        if f == 0.0 && p == 0.0 {
            return;
        }
        for (&t, &c) in &self.counts {
            if let Some(l) = self.logits.get_mut(t as usize) {
                *l -= f * c as f32 + p;
            }
        }
    }
}

/// The log-softmax of one row of logits, kept for a [`TokenLogprob`]: the raw row (the
/// sampler changes its copy in place) and its normaliser. One per sequence, its buffers reused
/// from token to token.
#[derive(Default)]
struct LogSoftmax {
    lse: f32,
    raw: Vec<f32>,
    idx: Vec<u32>,
}

impl LogSoftmax {
    /// Keeps `logits` (before penalties and sampling) and their log-sum-exp.
    fn keep(&mut self, logits: &[f32]) {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
        self.lse = max + sum.ln() as f32;
        self.raw.clear();
        self.raw.extend_from_slice(logits);
    }

    /// The log-probability of `tok` and of the `top` most likely tokens (ties by lower id).
    fn of(&mut self, tok: u32, top: usize) -> TokenLogprob {
        let (raw, lse) = (&self.raw, self.lse);
        self.idx.clear();
        self.idx.extend(0..raw.len() as u32);
        let by = |a: &u32, b: &u32| raw[*b as usize].total_cmp(&raw[*a as usize]).then(a.cmp(b));
        let k = top.min(self.idx.len());
        if k > 0 && k < self.idx.len() {
            self.idx.select_nth_unstable_by(k - 1, by);
        }
        let best = &mut self.idx[..k];
        best.sort_by(by);
        TokenLogprob {
            logprob: raw.get(tok as usize).map_or(f32::NEG_INFINITY, |l| l - lse),
            top: best.iter().map(|&t| (t, raw[t as usize] - lse)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogSoftmax;

    #[test]
    fn log_softmax_and_top_tokens() {
        let l = [1.0f32, 3.0, 2.0, 3.0];
        let lse = (1.0f64.exp() + 2.0 * 3.0f64.exp() + 2.0f64.exp()).ln() as f32;
        let mut ls = LogSoftmax::default();
        ls.keep(&l);
        let t = ls.of(2, 3);
        assert!((t.logprob - (2.0 - lse)).abs() < 1e-6);
        let ids: Vec<u32> = t.top.iter().map(|p| p.0).collect();
        assert_eq!(ids, [1, 3, 2], "most likely first, ties by id");
        let total: f32 = l.iter().map(|&x| (x - lse).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(ls.of(0, 0).top.is_empty());
        assert_eq!(ls.of(0, 10).top.len(), 4);
    }
}
