//! `tern eval MODEL --tasks ...`: zero-shot task accuracy with lm-evaluation-harness's
//! definitions (crates/tern-eval, docs/eval.md). Prints a Markdown table; `--log-samples`
//! writes one JSON line per document, `--json` one line per task.

use crate::run::ModelArgs;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use tern_eval::{task, Engine, Mode, Options, TaskResult, TaskSpec};
use tern_kernels::{Layout, ThreadPool};
use tern_model::model::{SyntheticHead, SyntheticWeights};
use tern_model::session::resolve_threads;
use tern_model::Model;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Tasks, comma-separated: arc_easy, arc_challenge, hellaswag, boolq, openbookqa, piqa,
    /// winogrande, sciq, lambada_openai; `all` for every one.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    tasks: Vec<String>,
    /// Score only the first N documents of each task.
    #[arg(long)]
    limit: Option<usize>,
    /// Solved examples before each document (drawn from the same split, never the document).
    #[arg(long, default_value_t = 0)]
    num_fewshot: usize,
    /// Seed of the few-shot draw and of the perplexity's bootstrap.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// One JSON line per document (prompt, choices, log-likelihoods, prediction) to this file.
    #[arg(long)]
    log_samples: Option<PathBuf>,
    /// Also write the Markdown table to this file.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// One JSON line per task on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Where the request files are (default $TERN_EVAL_DATA, else ~/.cache/tern/eval, filled
    /// by scripts/fetch_eval_data.py --tasks).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Score every choice alone from an empty cache (the slow baseline; same numbers).
    #[arg(long)]
    naive: bool,
    /// Documents whose choices run together in one step.
    #[arg(long, default_value_t = 8)]
    docs_per_step: usize,
    /// Token rows per forward step at most.
    #[arg(long, default_value_t = 512)]
    max_rows: usize,
    /// Bootstrap resamples of LAMBADA's perplexity standard error (the harness's default).
    #[arg(long, default_value_t = 100_000)]
    bootstrap_iters: usize,
    /// A synthetic model of this shape with random weights (e.g. 2b4t) and the bundled model's
    /// tokenizer instead of MODEL: for speed measurements only.
    #[arg(long)]
    shape: Option<String>,
}

pub fn run(a: &Args) -> Result<()> {
    let names: Vec<&str> = if a.tasks.iter().any(|t| t == "all") {
        task::TASK_NAMES.to_vec()
    } else {
        a.tasks.iter().map(String::as_str).collect()
    };
    let specs = names
        .iter()
        .map(|n| TaskSpec::named(n))
        .collect::<Result<Vec<_>, _>>()?;
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(tern_eval::default_data_dir);
    // Every task's data is read before the model, so a missing file fails at once.
    let docs = specs
        .iter()
        .map(|s| task::load(s, &data_dir))
        .collect::<Result<Vec<_>, _>>()?;
    let (threads, note) = resolve_threads(a.m.threads);
    if let Some(n) = note {
        eprintln!("tern: {n}");
    }
    let (loaded, path) = if a.shape.is_some() {
        // The tokenizer of the bundled model; the weights are replaced below.
        let m = ModelArgs {
            model: None,
            ..a.m.clone()
        };
        m.load()?
    } else {
        a.m.load()?
    };
    let synthetic;
    let (model, name): (&Model, String) = match &a.shape {
        Some(shape) => {
            let config = tern_model::shapes::named(shape)
                .with_context(|| format!("unknown shape {shape:?}"))?;
            synthetic = Model::synthetic(
                config,
                SyntheticWeights::Ternary(Layout::from(a.m.layout)),
                SyntheticHead::Tied,
                1,
            );
            (&synthetic, format!("{shape} (random weights)"))
        }
        None => (&loaded.model, path.display().to_string()),
    };
    let Some(tokenizer) = &loaded.tokenizer else {
        bail!("{name}: the model has no tokenizer; tasks are text");
    };
    let pool = ThreadPool::new(threads);
    let engine = Engine {
        model,
        tokenizer,
        pool: &pool,
    };
    let opts = Options {
        limit: a.limit,
        num_fewshot: a.num_fewshot,
        seed: a.seed,
        docs_per_step: a.docs_per_step,
        max_rows: a.max_rows,
        mode: if a.naive { Mode::Naive } else { Mode::Shared },
        kv: a.m.kv_type.into(),
        threads,
        bootstrap_iters: a.bootstrap_iters,
    };
    let mut samples = match &a.log_samples {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("{}", p.display()))?,
        )),
        None => None,
    };
    let mut results = Vec::new();
    for (spec, docs) in specs.iter().zip(&docs) {
        let total = a.limit.map_or(docs.len(), |l| l.min(docs.len())) as u64;
        let bar = progress_bar(spec.name, total);
        let start = std::time::Instant::now();
        let r = tern_eval::evaluate(
            &engine,
            spec,
            docs,
            &opts,
            |done, n| match &bar {
                Some(b) => b.set_position(done as u64),
                None => {
                    if done == n || done % 200 < a.docs_per_step.max(1) {
                        let rate = done as f64 / start.elapsed().as_secs_f64().max(1e-9);
                        eprintln!("tern: {} {done}/{n} ({rate:.1} examples/s)", spec.name);
                    }
                }
            },
            |s| {
                if let Some(w) = samples.as_mut() {
                    let line = sample_json(spec, s);
                    writeln!(w, "{line}").map_err(|e| tern_eval::EvalError::Io {
                        path: a.log_samples.as_ref().expect("set").display().to_string(),
                        source: e,
                    })?;
                }
                Ok(())
            },
        )?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        eprintln!(
            "tern: {}: {} docs in {:.1} s ({:.2} examples/s)",
            spec.name,
            r.docs,
            r.seconds,
            r.docs as f64 / r.seconds
        );
        if a.json {
            println!("{}", result_json(&r, &name, a.naive));
        }
        results.push(r);
    }
    if let Some(mut w) = samples {
        w.flush()?;
    }
    let table = markdown(&results);
    if !a.json {
        print!("{table}");
    }
    if let Some(p) = &a.output {
        std::fs::write(p, &table).with_context(|| format!("{}", p.display()))?;
    }
    Ok(())
}

fn progress_bar(task: &str, total: u64) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = ProgressBar::new(total);
    b.set_style(
        ProgressStyle::with_template("{prefix:>14} {pos:>6}/{len} [{bar:30}] {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_prefix(task.to_string());
    Some(b)
}

fn metric_cell(m: Option<tern_eval::Metric>) -> String {
    m.map_or("-".into(), |m| format!("{:.4} ± {:.4}", m.value, m.stderr))
}

/// The harness's table: one row per task.
pub fn markdown(results: &[TaskResult]) -> String {
    let mut s = String::from(
        "| task | docs | shots | acc | acc_norm | perplexity | chance |\n|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.task,
            r.docs,
            r.num_fewshot,
            metric_cell(Some(r.acc)),
            metric_cell(r.acc_norm),
            r.perplexity
                .map_or("-".into(), |m| format!("{:.2} ± {:.2}", m.value, m.stderr)),
            if r.chance > 0.0 {
                format!("{:.4}", r.chance)
            } else {
                "-".into()
            }
        ));
    }
    s
}

fn result_json(r: &TaskResult, model: &str, naive: bool) -> serde_json::Value {
    let m = |m: Option<tern_eval::Metric>| {
        m.map(|m| serde_json::json!({"value": m.value, "stderr": m.stderr}))
    };
    serde_json::json!({
        "task": r.task, "model": model, "docs": r.docs, "num_fewshot": r.num_fewshot,
        "acc": m(Some(r.acc)), "acc_norm": m(r.acc_norm), "perplexity": m(r.perplexity),
        "chance": r.chance, "requests": r.requests, "seconds": r.seconds,
        "examples_per_s": r.docs as f64 / r.seconds, "naive": naive,
    })
}

fn sample_json(spec: &TaskSpec, s: &tern_eval::Sample) -> serde_json::Value {
    serde_json::json!({
        "task": spec.name, "doc_id": s.doc.id, "gold": s.doc.gold,
        "contexts": s.doc.contexts, "continuations": s.doc.continuations,
        "choices": s.doc.choices,
        "ll": s.scored.iter().map(|x| x.ll).collect::<Vec<_>>(),
        "is_greedy": s.scored.iter().map(|x| x.greedy).collect::<Vec<_>>(),
        "tokens": s.scored.iter().map(|x| x.tokens).collect::<Vec<_>>(),
        "pred": s.judged.pred, "pred_norm": s.judged.pred_norm,
        "acc": s.judged.acc, "acc_norm": s.judged.acc_norm,
    })
}
