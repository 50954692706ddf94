//! The front door to the engine: [`Session::open`] loads a model (a path, or the bundled one)
//! with its tokenizer and chat template, resolves the thread count once for the loader and the
//! pool, and sizes a KV cache; [`Session::generate`] runs a prompt and streams tokens.
//!
//! The weights ([`Loaded`]) sit behind an `Arc` and are never written after the load, while
//! everything a sequence owns (KV cache, scratch, sampler) is a [`State`] of its own, so a
//! scheduler can run several sequences over one model ([`Session::new_state`]).

use crate::chat::ChatTemplate;
use crate::error::ModelError;
use crate::forward::{BatchScratch, KvCache, KvType, Logits, State};
use crate::load::{self, Loaded};
use crate::model::{HeadKind, LoadOptions};
use crate::sample::{Sampler, SamplerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tern_kernels::{Layout, ThreadPool};

/// The cores this process may use.
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A thread count as asked for (0 = all cores), capped at the cores there are: more threads
/// than cores only make the pool's spinning workers fight (measured: `--threads 1000` ran
/// 170x slower on 2 cores). The note says what was changed, for the user.
pub fn resolve_threads(requested: usize) -> (usize, Option<String>) {
    let cores = available_threads();
    match requested {
        0 => (cores, None),
        n if n > cores => (
            cores,
            Some(format!(
                "{n} threads requested but {cores} cores are available: using {cores}"
            )),
        ),
        n => (n, None),
    }
}

/// Which model to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelPath {
    /// A Hugging Face directory or a GGUF file.
    Path(PathBuf),
    /// The small model bundled with tern ([`crate::bundled`]).
    Bundled,
}

impl ModelPath {
    /// `Some(path)` as a path, `None` as the bundled model.
    pub fn from_option(p: Option<&Path>) -> ModelPath {
        p.map_or(ModelPath::Bundled, |p| ModelPath::Path(p.to_path_buf()))
    }

    /// The file or directory to read (the bundled model is written to the cache first).
    pub fn resolve(&self) -> Result<PathBuf, ModelError> {
        match self {
            ModelPath::Path(p) => Ok(p.clone()),
            ModelPath::Bundled => crate::bundled::path(),
        }
    }
}

/// Choices for [`Session::open`] that the checkpoint does not make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Threads for the load and the kernels; 0 = all cores (capped at the cores there are).
    pub threads: usize,
    /// Context length (prompt + generated tokens); 0 = the model's maximum.
    pub ctx: usize,
    /// Compute layout of the ternary projections.
    pub layout: Layout,
    /// LM head storage.
    pub head: HeadKind,
    /// Prompt tokens run per forward chunk.
    pub max_batch: usize,
    /// Element type of the KV caches this session makes.
    pub kv: KvType,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threads: 0,
            ctx: 0,
            layout: Layout::Tern2,
            head: HeadKind::F16,
            max_batch: 512,
            kv: KvType::F32,
        }
    }
}

/// What one generation asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct GenParams {
    /// Most tokens to generate; fewer when the context fills first
    /// ([`GenStats::context_full`]).
    pub max_new: usize,
    pub sampling: SamplerConfig,
    /// Keep generating through stop tokens (benchmarks, `--ignore-eos`).
    pub ignore_eos: bool,
}

/// Timings of one generation, llama.cpp style.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub generated: usize,
    pub gen_secs: f64,
    /// Whether generation ended on a stop token (rather than the budget).
    pub stopped: bool,
    /// Whether generation ended because the context was full (before the budget asked for).
    pub context_full: bool,
}

impl GenStats {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_secs.max(1e-12)
    }
    pub fn gen_tps(&self) -> f64 {
        self.generated as f64 / self.gen_secs.max(1e-12)
    }
}

/// A loaded model, a thread pool and one sequence's state.
pub struct Session {
    pub loaded: Arc<Loaded>,
    pub pool: ThreadPool,
    pub state: State,
    /// The chat template in use: the checkpoint's, else BitNet b1.58 2B4T's format.
    pub template: ChatTemplate,
    /// Where `loaded` was read from.
    pub path: PathBuf,
    /// Whether `path` is the bundled model.
    pub bundled: bool,
    /// Things the user should be told once (a capped thread count).
    pub notes: Vec<String>,
    threads: usize,
    kv: KvType,
    sampler: Option<Sampler>,
    /// Buffers of the generation loop (no allocation per token).
    logits: Vec<f32>,
    recent: Vec<u32>,
}

impl Session {
    /// Loads `model` and sizes a KV cache for `opts.ctx` tokens.
    pub fn open(model: &ModelPath, opts: &Options) -> Result<Session, ModelError> {
        let (threads, note) = resolve_threads(opts.threads);
        let path = model.resolve()?;
        let load_opts = LoadOptions {
            layout: opts.layout,
            head: opts.head,
            threads,
        };
        let mut loaded = load::open(&path, &load_opts)?;
        let template = loaded.take_template();
        let max = loaded.model.config.max_seq_len;
        let ctx = if opts.ctx == 0 { max } else { opts.ctx };
        let state =
            State::with_kv_type(&loaded.model.config, ctx, opts.max_batch, threads, opts.kv)?;
        Ok(Session {
            loaded: Arc::new(loaded),
            pool: ThreadPool::new(threads),
            state,
            template,
            path,
            bundled: *model == ModelPath::Bundled,
            notes: note.into_iter().collect(),
            threads,
            kv: opts.kv,
            sampler: None,
            logits: Vec::new(),
            recent: Vec::new(),
        })
    }

    /// Threads the pool runs (resolved once, at open).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Element type of the KV caches this session makes.
    pub fn kv_type(&self) -> KvType {
        self.kv
    }

    /// A fresh state over the same weights, for another sequence of up to `ctx` tokens.
    pub fn new_state(&self, ctx: usize, max_batch: usize) -> Result<State, ModelError> {
        State::with_kv_type(
            &self.loaded.model.config,
            ctx,
            max_batch,
            self.threads,
            self.kv,
        )
    }

    /// An empty KV cache for one more sequence of up to `ctx` tokens (0 = the model's
    /// maximum), for [`crate::Model::forward_batch`].
    pub fn new_kv_cache(&self, ctx: usize) -> Result<KvCache, ModelError> {
        let c = &self.loaded.model.config;
        KvCache::with_type(c, if ctx == 0 { c.max_seq_len } else { ctx }, self.kv)
    }

    /// Step buffers for [`crate::Model::forward_batch`]: up to `max_rows` token rows per step
    /// over caches of up to `ctx` tokens (0 = the model's maximum), attention on this
    /// session's threads.
    pub fn new_batch_scratch(
        &self,
        ctx: usize,
        max_rows: usize,
    ) -> Result<BatchScratch, ModelError> {
        let c = &self.loaded.model.config;
        let ctx = if ctx == 0 { c.max_seq_len } else { ctx };
        BatchScratch::new(c, ctx, max_rows, self.threads)
    }

    /// Tokens of `text` (with BOS when the tokenizer adds one), or an error saying why the
    /// model takes no text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.loaded.require_tokenizer()?.encode(text, true)
    }

    /// Tokens left in the context.
    pub fn context_left(&self) -> usize {
        self.state.capacity() - self.state.pos()
    }

    /// Feeds `prompt` after what the state holds, then generates up to `p.max_new` tokens
    /// (fewer when the context fills first), calling `on_token` with each, a stop token
    /// included; `on_token` returning `false` ends generation. The sampler keeps its random
    /// state from call to call while `p.sampling` stays the same.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        p: &GenParams,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<GenStats, ModelError> {
        if prompt.is_empty() {
            return Err(ModelError::Other(
                "empty prompt: give at least one token".into(),
            ));
        }
        let left = self.context_left();
        if prompt.len() >= left {
            return Err(ModelError::ContextOverflow {
                tokens: self.state.pos() + prompt.len(),
                generate: 1,
                context: self.state.capacity(),
            });
        }
        let budget = p.max_new.min(left - prompt.len());
        if self
            .sampler
            .as_ref()
            .is_none_or(|s| *s.config() != p.sampling)
        {
            p.sampling
                .validate()
                .map_err(|e| ModelError::Other(format!("sampling: {e}")))?;
            self.sampler = Some(Sampler::new(p.sampling.clone()));
        }
        let sampler = self.sampler.as_mut().expect("set above");
        let is_stop = |t: u32| !p.ignore_eos && self.loaded.stop_tokens.contains(&t);
        let (model, state, pool) = (&self.loaded.model, &mut self.state, &self.pool);
        let mut stats = GenStats {
            prompt_tokens: prompt.len(),
            ..Default::default()
        };
        // The repetition penalty's window: the last `repeat_last_n` tokens, prompt included.
        let window = p.sampling.repeat_last_n;
        self.recent.clear();
        self.recent
            .extend_from_slice(&prompt[prompt.len().saturating_sub(window)..]);

        let t = Instant::now();
        let logits = model.forward(prompt, state, Logits::Last, pool)?;
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        stats.prompt_secs = t.elapsed().as_secs_f64();

        let t = Instant::now();
        for i in 0..budget {
            let tok = sampler.sample(&mut self.logits, &self.recent);
            stats.generated += 1;
            if window > 0 {
                if self.recent.len() == window {
                    self.recent.remove(0);
                }
                self.recent.push(tok);
            }
            let go_on = on_token(tok);
            if is_stop(tok) {
                stats.stopped = true;
                break;
            }
            if !go_on || i + 1 == budget {
                stats.context_full = i + 1 == budget && budget < p.max_new;
                break;
            }
            let logits = model.forward(&[tok], state, Logits::Last, pool)?;
            self.logits.copy_from_slice(logits);
        }
        stats.gen_secs = t.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Logits of every token of `ids` (`[n][vocab]`), appended after what the state holds.
    pub fn logits_all(&mut self, ids: &[u32]) -> Result<&[f32], ModelError> {
        self.loaded
            .model
            .forward(ids, &mut self.state, Logits::All, &self.pool)
    }
}
