//! One engine thread per model: it owns the model's [`Session`] (weights and thread pool) and
//! serves jobs from a bounded queue with continuous batching.
//!
//! Up to `parallel` sequences are active, each with its own [`KvCache`] (from a free list, so
//! KV buffers are reused) and its own sampler. Every round is **one** batched forward step
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
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;
use tern_model::chat::ChatTemplate;
use tern_model::forward::Logits;
use tern_model::load::Loaded;
use tern_model::sample::{Sampler, SamplerConfig};
use tern_model::{BatchScratch, KvCache, SeqInput, Session, State};
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

/// What the engine sends back for a job.
#[derive(Debug)]
pub enum Event {
    /// A generated token (stop tokens are not sent: they end the sequence).
    Token(u32),
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
    queue: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl EngineHandle {
    /// Queues `job`, or says 429 when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        // Counted before the send: the engine may take the job (and decrement) at once.
        self.metrics
            .queue_depth
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = self.queue.try_send(job);
        if r.is_err() {
            self.metrics
                .queue_depth
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
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

/// Starts the engine thread of `session`, named `name`, with `parallel` sequence slots and a
/// queue of `max_queue` waiting jobs.
pub fn spawn(
    name: String,
    mut session: Session,
    parallel: usize,
    max_queue: usize,
    metrics: Arc<Metrics>,
) -> std::io::Result<EngineHandle> {
    let (tx, rx) = sync_channel(max_queue);
    let template = std::mem::replace(&mut session.template, ChatTemplate::bitnet_2b4t());
    let ctx = session.state.capacity();
    let handle = EngineHandle {
        name: name.clone(),
        loaded: session.loaded.clone(),
        template,
        ctx,
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
                parallel: parallel.max(1),
                ctx,
                metrics,
                session,
            };
            e.run(rx)
        })?;
    Ok(handle)
}

/// Rows (prompt tokens of prefilling sequences plus one per decoding sequence) one batched
/// step runs at most: a long prompt is prefilled in chunks between the others' decode steps
/// (chunked prefill), so it does not stall them.
const MAX_ROWS: usize = 256;

struct Engine {
    session: Session,
    /// Shared scratch of the batched step.
    scratch: Option<BatchScratch>,
    /// Reset KV caches ready for a new sequence.
    free: Vec<KvCache>,
    active: Vec<Seq>,
    parallel: usize,
    ctx: usize,
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

    /// Takes queued jobs into free slots; blocks when nothing is active. `false` once the
    /// queue is closed and nothing is left to run.
    fn admit(&mut self, rx: &Receiver<Job>) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        while self.active.len() < self.parallel {
            let job = if self.active.is_empty() {
                match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return false,
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            };
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            if job.events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Relaxed);
                continue;
            }
            if job.prompt.is_empty() {
                let _ = job.events.send(Event::Error("empty prompt".into()));
                continue;
            }
            let cache = match self.free.pop() {
                Some(c) => Ok(c),
                None => self.session.new_kv_cache(self.ctx),
            };
            let scratch = match self.scratch.take() {
                Some(s) => Ok(s),
                None => self.session.new_batch_scratch(self.ctx, MAX_ROWS),
            };
            let (cache, scratch) = match (cache, scratch) {
                (Ok(c), Ok(s)) => (c, s),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = job.events.send(Event::Error(format!("no KV cache: {e}")));
                    continue;
                }
            };
            self.scratch = Some(scratch);
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
            });
        }
        true
    }

    /// One batched forward step over every active sequence (each decoding sequence's last
    /// token, and the next chunk of each prefilling sequence's prompt, as one set of
    /// projections), then one sampled token for every sequence whose prompt is done.
    /// Finished and cancelled sequences give their cache back.
    fn round(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
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
        let mut budget = MAX_ROWS.saturating_sub(decoding).max(1);
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
        use std::sync::atomic::Ordering::Relaxed;
        let mut seq = self.active.remove(i);
        self.metrics.active_sequences.fetch_sub(1, Relaxed);
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
        use std::sync::atomic::Ordering::Relaxed;
        self.apply_penalties();
        let tok = self.sampler.sample(&mut self.logits, &[]);
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
        if self.job.events.send(Event::Token(tok)).is_err() {
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
