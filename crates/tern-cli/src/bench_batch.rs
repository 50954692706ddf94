//! `tern bench batch`: the paper's Table 3 on this machine. Under one memory budget for
//! weights plus KV cache, the largest batch of sequences of `--prompt + --gen` tokens that a
//! shape holds as BitNet b1.58 (ternary) and as FP16 (`--dense f16`) of the same shape, and the
//! decode throughput measured at that batch: one token for every sequence per batched step
//! (`Model::forward_batch`, weights read once per step), with every cache holding
//! `prompt + gen / 2` tokens (the middle of the generation; random keys and values, since
//! attention's time does not depend on them). Prefill is not part of the figure.

use crate::bench_model::mem_available_bytes;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::time::Instant;
use tern_kernels::{Layout, ThreadPool};
use tern_model::forward::Logits;
use tern_model::model::{synthetic_bytes, SyntheticHead, SyntheticWeights};
use tern_model::session::resolve_threads;
use tern_model::{BatchScratch, KvCache, KvType, Model, SeqInput};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Shapes (700m, 1.3b, 2b4t, 3b, 3.9b, 7b, 13b, 30b, 70b).
    #[arg(long, value_delimiter = ',', default_value = "3b,13b")]
    shapes: Vec<String>,
    /// Bytes for weights + KV cache, e.g. 20GiB.
    #[arg(long, value_parser = crate::serve::parse_bytes, default_value = "16GiB")]
    budget: usize,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Generated tokens per sequence.
    #[arg(long, default_value_t = 128)]
    gen: usize,
    /// KV cache element type.
    #[arg(long, value_enum, default_value_t = crate::run::KvArg::F16)]
    kv_type: crate::run::KvArg,
    /// Timed decode steps per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Largest batch measured (a batch above it is reported from its arithmetic only).
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
    /// Instead of the budget's largest batch: time the ternary model at these batch sizes
    /// (decode throughput against batch size).
    #[arg(long, value_delimiter = ',')]
    batch: Vec<usize>,
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// With --batch: print where a step's time goes, phase by phase.
    #[arg(long)]
    profile: bool,
    /// JSON Lines instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: &Args) -> Result<()> {
    let (threads, note) = resolve_threads(a.threads);
    if let Some(n) = note {
        eprintln!("tern: {n}");
    }
    let kv: KvType = a.kv_type.into();
    let pool = ThreadPool::new(threads);
    let tokens = a.prompt + a.gen;
    if !a.json {
        println!(
            "budget {:.1} GiB for weights + KV ({} KV), sequences of {} + {} tokens, {threads} threads",
            a.budget as f64 / (1u64 << 30) as f64,
            kv.name(),
            a.prompt,
            a.gen
        );
        println!("| shape | weights | weight GiB | KV MiB / seq | max batch | decode tok/s at that batch | s / step |");
        println!("|---|---|---:|---:|---:|---:|---:|");
    }
    for shape in &a.shapes {
        let mut config =
            tern_model::shapes::named(shape).with_context(|| format!("unknown shape {shape:?}"))?;
        config.max_seq_len = config.max_seq_len.max(tokens);
        if !a.batch.is_empty() {
            let weights = SyntheticWeights::Ternary(Layout::Tern2);
            for &b in &a.batch {
                let b = b.max(1);
                let s = decode_at_batch(a, &config, weights, b, kv, &pool)?;
                let tps = b as f64 / s;
                if a.json {
                    println!(
                        "{}",
                        json!({"shape": shape, "weights": "b1.58 tern2", "kv_type": kv.name(),
                               "batch": b, "depth": a.prompt + a.gen / 2, "step_s": s,
                               "tokens_per_s": tps, "threads": threads})
                    );
                } else {
                    println!("| {shape} | b1.58 tern2 | | | {b} | {tps:.1} | {s:.3} |");
                }
            }
            continue;
        }
        for (name, weights) in [
            ("b1.58 tern2", SyntheticWeights::Ternary(Layout::Tern2)),
            ("fp16", SyntheticWeights::F16),
        ] {
            let wbytes = synthetic_bytes(&config, weights);
            let per_seq = KvCache::bytes_for(&config, tokens, kv);
            let batch = a.budget.saturating_sub(wbytes) / per_seq;
            let mut row = json!({
                "shape": shape, "weights": name, "weight_bytes": wbytes, "kv_type": kv.name(),
                "kv_bytes_per_seq": per_seq, "budget_bytes": a.budget, "prompt": a.prompt,
                "gen": a.gen, "max_batch": batch, "threads": threads,
            });
            let measured = if batch == 0 {
                None
            } else if batch > a.max_batch {
                eprintln!("tern: {shape} {name}: batch {batch} above --max-batch; not timed");
                None
            } else {
                let need = wbytes + batch * per_seq;
                if let Some(avail) = mem_available_bytes() {
                    if need > avail * 95 / 100 {
                        bail!(
                            "{shape} {name}: weights and a batch of {batch} need {:.1} GB; {:.1} GB are available: lower --budget",
                            need as f64 / 1e9,
                            avail as f64 / 1e9
                        );
                    }
                }
                Some(decode_at_batch(a, &config, weights, batch, kv, &pool)?)
            };
            if let Some(s) = measured {
                row["step_s"] = s.into();
                row["tokens_per_s"] = (batch as f64 / s).into();
            }
            if a.json {
                println!("{row}");
            } else {
                let (tps, step) = measured.map_or(("does not fit".into(), "-".into()), |s| {
                    (format!("{:.1}", batch as f64 / s), format!("{s:.2}"))
                });
                println!(
                    "| {shape} | {name} | {:.2} | {:.0} | {batch} | {tps} | {step} |",
                    wbytes as f64 / (1u64 << 30) as f64,
                    per_seq as f64 / (1u64 << 20) as f64
                );
            }
        }
    }
    Ok(())
}

/// Median seconds of one batched decode step of `batch` sequences, each at position
/// `prompt + gen / 2`.
fn decode_at_batch(
    a: &Args,
    config: &tern_model::ModelConfig,
    weights: SyntheticWeights,
    batch: usize,
    kv: KvType,
    pool: &ThreadPool,
) -> Result<f64> {
    let model = Model::synthetic(config.clone(), weights, SyntheticHead::Tied, 1);
    let tokens = a.prompt + a.gen;
    let depth = a.prompt + a.gen / 2;
    let mut first = KvCache::with_type(config, tokens, kv)?;
    first.fill_random(depth, 5)?;
    // Copies: separate memory, so each sequence's attention reads its own cache.
    let mut caches: Vec<KvCache> = (1..batch).map(|_| first.clone()).collect();
    caches.push(first);
    let mut scratch = BatchScratch::new(config, tokens, batch, pool.threads())?;
    let ids: Vec<u32> = (0..batch as u32)
        .map(|i| i * 7919 % config.vocab_size as u32)
        .collect();
    let mut times = Vec::new();
    // One untimed step (first touch of the scratch), then the timed ones.
    for step in 0..=a.steps.max(1) {
        if step == 1 && a.profile {
            scratch.set_profiling(true);
        }
        let mut seqs: Vec<SeqInput> = caches
            .iter_mut()
            .zip(&ids)
            .map(|(cache, t)| SeqInput {
                cache,
                tokens: std::slice::from_ref(t),
                logits: Logits::Last,
            })
            .collect();
        let t = Instant::now();
        model.forward_batch(&mut seqs, &mut scratch, pool)?;
        if step > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        for c in caches.iter_mut() {
            c.truncate(depth);
        }
    }
    if a.profile {
        let p = scratch.profile();
        let steps = times.len() as f64;
        eprintln!("batch {batch}: ms per step by phase");
        for (name, ns) in tern_model::forward::Profile::PHASES.iter().zip(p.ns) {
            eprintln!("  {name:<42} {:>8.2}", ns as f64 / 1e6 / steps);
        }
    }
    times.sort_by(|x, y| x.total_cmp(y));
    Ok(times[times.len() / 2])
}
