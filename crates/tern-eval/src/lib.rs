//! `tern eval`: zero-shot (and few-shot) task accuracy with lm-evaluation-harness's task
//! definitions, over the tern engine.
//!
//! [`task`] reads AI2's request files and rebuilds each document's prompt in the harness's
//! format; [`score`] runs the log-likelihood requests (a document's choices as one batch over
//! its context computed once); [`metrics`] turns them into `acc`, `acc_norm`, `perplexity`
//! and their standard errors; [`evaluate`] ties them together for one task.

pub mod error;
pub mod metrics;
pub mod score;
pub mod task;

pub use error::EvalError;
pub use metrics::{Judged, Metric};
pub use score::{encode_pair, Mode, Request, Scored, Scorer};
pub use task::{Doc, Kind, TaskSpec};

use std::path::PathBuf;
use tern_kernels::ThreadPool;
use tern_model::tokenizer::Tokenizer;
use tern_model::{KvType, Model};

/// Where `tern eval` reads task data from: `$TERN_EVAL_DATA`, else
/// `$XDG_CACHE_HOME/tern/eval` (default `~/.cache/tern/eval`), where
/// `scripts/fetch_eval_data.py --tasks` puts it.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TERN_EVAL_DATA") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("tern").join("eval")
}

/// How to run one task.
#[derive(Clone, Debug)]
pub struct Options {
    /// Score only the first `limit` documents (the harness's `--limit`).
    pub limit: Option<usize>,
    /// Solved examples before each document.
    pub num_fewshot: usize,
    /// Seed of the few-shot draw and the perplexity bootstrap.
    pub seed: u64,
    /// Documents whose requests run together (shared-prefix mode).
    pub docs_per_step: usize,
    /// Token rows per forward step at most.
    pub max_rows: usize,
    pub mode: Mode,
    pub kv: KvType,
    /// Threads of the pool (for the step buffers' attention scratch).
    pub threads: usize,
    /// Bootstrap resamples for the perplexity's standard error (the harness's 100000).
    pub bootstrap_iters: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limit: None,
            num_fewshot: 0,
            seed: 1234,
            docs_per_step: 8,
            max_rows: 512,
            mode: Mode::Shared,
            kv: KvType::F32,
            threads: 1,
            bootstrap_iters: 100_000,
        }
    }
}

/// One document's results (a line of `--log-samples`).
#[derive(Clone, Debug)]
pub struct Sample {
    pub doc: Doc,
    pub scored: Vec<Scored>,
    pub judged: Judged,
}

/// A task's results.
#[derive(Clone, Debug)]
pub struct TaskResult {
    pub task: &'static str,
    pub docs: usize,
    pub num_fewshot: usize,
    pub acc: Metric,
    pub acc_norm: Option<Metric>,
    /// LAMBADA's perplexity of the answer word.
    pub perplexity: Option<Metric>,
    /// Accuracy of guessing uniformly.
    pub chance: f64,
    /// Log-likelihood requests scored (one per choice).
    pub requests: usize,
    pub seconds: f64,
}

/// The model and tokenizer a task runs on.
pub struct Engine<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a Tokenizer,
    pub pool: &'a ThreadPool,
}

/// Runs `spec` over `docs` (already limited by the caller or not), calling `progress(done,
/// total)` after every batch of documents and `on_sample` with each document in order.
pub fn evaluate(
    e: &Engine<'_>,
    spec: &TaskSpec,
    docs: &[Doc],
    opts: &Options,
    mut progress: impl FnMut(usize, usize),
    mut on_sample: impl FnMut(&Sample) -> Result<(), EvalError>,
) -> Result<TaskResult, EvalError> {
    let start = std::time::Instant::now();
    let n = opts.limit.map_or(docs.len(), |l| l.min(docs.len()));
    let prefix = e
        .tokenizer
        .bos_token_id()
        .or_else(|| e.model.config.eos_token_ids.first().copied())
        .unwrap_or(0);
    // Documents as the model sees them (few-shot prefix included), tokenized.
    let shown: Vec<Doc> = (0..n)
        .map(|i| {
            let p = task::fewshot_prefix(docs, i, opts.num_fewshot, opts.seed);
            docs[i].with_prefix(&p)
        })
        .collect();
    let requests: Vec<Vec<Request>> = shown
        .iter()
        .map(|d| {
            d.contexts
                .iter()
                .zip(&d.continuations)
                .map(|(c, k)| encode_pair(e.tokenizer, c, k, prefix))
                .collect()
        })
        .collect::<Result<_, _>>()?;
    let longest = requests
        .iter()
        .flatten()
        .map(|r| r.context.len() + r.continuation.len() - 1)
        .max()
        .unwrap_or(1);
    let mut scorer = Scorer::new(
        e.model,
        e.pool,
        opts.threads,
        opts.kv,
        longest,
        opts.max_rows,
        opts.mode,
    )?;
    let (mut accs, mut norms, mut lls) = (Vec::new(), Vec::new(), Vec::new());
    let mut done = 0;
    for (chunk_docs, chunk_reqs) in shown
        .chunks(opts.docs_per_step.max(1))
        .zip(requests.chunks(opts.docs_per_step.max(1)))
    {
        let scored = scorer.score(chunk_reqs)?;
        for (doc, s) in chunk_docs.iter().zip(scored) {
            let judged = metrics::judge(spec, doc, &s);
            accs.push(judged.acc);
            norms.extend(judged.acc_norm);
            if spec.kind == Kind::Loglikelihood {
                lls.push(s[0].ll);
            }
            on_sample(&Sample {
                doc: doc.clone(),
                scored: s,
                judged,
            })?;
        }
        done += chunk_docs.len();
        progress(done, n);
    }
    if n == 0 {
        return Err(EvalError::Other(format!(
            "task {}: no documents",
            spec.name
        )));
    }
    Ok(TaskResult {
        task: spec.name,
        docs: n,
        num_fewshot: opts.num_fewshot,
        acc: metrics::mean_with_stderr(&accs),
        acc_norm: spec
            .has_acc_norm()
            .then(|| metrics::mean_with_stderr(&norms)),
        perplexity: (spec.kind == Kind::Loglikelihood)
            .then(|| metrics::perplexity_with_stderr(&lls, opts.bootstrap_iters, opts.seed)),
        chance: task::chance(spec, &shown),
        requests: requests.iter().map(Vec::len).sum(),
        seconds: start.elapsed().as_secs_f64(),
    })
}
