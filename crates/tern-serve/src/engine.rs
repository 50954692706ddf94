//! One engine thread per model: it owns the model's [`Session`] (thread pool and the first KV
//! state) and serves jobs from a bounded queue.
//!
//! Scheduling is deliberately simple and exact: up to `parallel` sequences are active, each
//! with its own [`State`] (from a free list, so KV buffers are reused) and its own sampler, and
//! every round advances each of them by one forward call (the whole prompt on its first turn,
//! then one token), round-robin. A sequence's forward calls are exactly those of
//! [`Session::generate`], so its greedy output is the same as `tern run`'s.
//!
//! **Where the batched step plugs in:** `Engine::round` (through `Seq::step`) is the only place
//! that calls the model. A batched engine replaces its loop of per-sequence `forward` calls with
//! one step over all active states (one ternary GEMM per projection), then samples each
//! sequence's logits as `Seq::step` does; admission, cancellation and the event protocol stay
//! as they are.

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
use tern_model::{Session, State};
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

/// Prompt tokens per forward chunk (as [`tern_model::Options::default`]).
const MAX_BATCH: usize = 512;

struct Engine {
    session: Session,
    /// Reset states ready for a new sequence.
    free: Vec<State>,
    active: Vec<Seq>,
    parallel: usize,
    ctx: usize,
    metrics: Arc<Metrics>,
}

/// One active sequence.
struct Seq {
    job: Job,
    state: State,
    sampler: Sampler,
    logits: Vec<f32>,
    /// Sampled tokens so far.
    generated: usize,
    /// The last sampled token, to feed next (`None` before the prompt ran).
    last: Option<u32>,
    /// How often each token was generated (frequency/presence penalties).
    counts: HashMap<u32, u32>,
    /// When the last token was sampled (inter-token latency).
    last_at: Option<Instant>,
}

impl Engine {
    fn run(&mut self, rx: Receiver<Job>) {
        // The session's own state is the first slot.
        let placeholder = self.empty_state();
        let first = std::mem::replace(&mut self.session.state, placeholder);
        self.free.push(first);
        loop {
            if !self.admit(&rx) {
                return;
            }
            self.round();
        }
    }

    /// A minimal placeholder state (never run).
    fn empty_state(&self) -> State {
        State::new(&self.session.loaded.model.config, 1, 1, 1).expect("a one-token state")
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
            let state = match self.free.pop() {
                Some(s) => s,
                None => match self.session.new_state(self.ctx, MAX_BATCH) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = job.events.send(Event::Error(format!("no KV state: {e}")));
                        continue;
                    }
                },
            };
            self.metrics.active_sequences.fetch_add(1, Relaxed);
            self.active.push(Seq {
                sampler: Sampler::new(job.sampling.clone()),
                job,
                state,
                logits: Vec::new(),
                generated: 0,
                last: None,
                counts: HashMap::new(),
                last_at: None,
            });
        }
        true
    }

    /// One forward call and one sampled token for every active sequence; finished and
    /// cancelled ones give their state back.
    fn round(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut i = 0;
        while i < self.active.len() {
            let seq = &mut self.active[i];
            let (loaded, pool) = (&self.session.loaded, &self.session.pool);
            // A panic in one sequence (a bug) ends that request, not the server.
            let outcome = catch_unwind(AssertUnwindSafe(|| seq.step(loaded, pool, &self.metrics)));
            // (finished, whether its state can be reused)
            let (done, reuse) = match outcome {
                Ok(Step::Continue) => (false, true),
                Ok(Step::Done) => (true, true),
                Ok(Step::Cancelled) => {
                    self.metrics.cancelled.fetch_add(1, Relaxed);
                    (true, true)
                }
                Err(_) => {
                    let _ = seq
                        .job
                        .events
                        .send(Event::Error("internal error in the engine".into()));
                    // The state may be half-written: drop it rather than reuse it.
                    (true, false)
                }
            };
            if done {
                let mut seq = self.active.remove(i);
                self.metrics.active_sequences.fetch_sub(1, Relaxed);
                if reuse {
                    seq.state.reset();
                    self.free.push(seq.state);
                }
            } else {
                i += 1;
            }
        }
    }
}

enum Step {
    Continue,
    Done,
    Cancelled,
}

impl Seq {
    /// Runs the prompt (first call) or the last token, samples the next token and sends it.
    fn step(
        &mut self,
        loaded: &Loaded,
        pool: &tern_kernels::ThreadPool,
        metrics: &Metrics,
    ) -> Step {
        use std::sync::atomic::Ordering::Relaxed;
        if self.job.events.is_closed() {
            return Step::Cancelled;
        }
        let input: &[u32] = match &self.last {
            None => &self.job.prompt,
            Some(t) => std::slice::from_ref(t),
        };
        match loaded
            .model
            .forward(input, &mut self.state, Logits::Last, pool)
        {
            Ok(l) => {
                self.logits.clear();
                self.logits.extend_from_slice(l);
            }
            Err(e) => {
                let _ = self.job.events.send(Event::Error(e.to_string()));
                return Step::Done;
            }
        }
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
