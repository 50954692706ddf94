//! `tern bench model`: llama-bench style prompt processing (`ppN`) and generation (`tgN`)
//! throughput of a whole model, ternary or dense, on a file or a synthetic shape.

use crate::run::{HeadArg, KvArg, LayoutArg, ModelArgs};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Instant;
use tern_kernels::rng::Rng;
use tern_kernels::ThreadPool;
use tern_model::forward::Logits;
use tern_model::model::{synthetic_bytes, SyntheticHead, SyntheticWeights};
use tern_model::session::resolve_threads;
use tern_model::{KvType, Model, State};

use crate::counters::{Cost, Meter};

/// `--dense`: the FP baseline of a synthetic shape.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseArg {
    F16,
    F32,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A Hugging Face model directory or GGUF file to benchmark; none (and no --shape): the
    /// bundled model.
    model: Option<PathBuf>,
    /// A synthetic model of a named shape with random weights: 700m, 1.3b, 2b4t, 3b, 3.9b, 7b,
    /// 13b, 30b, 70b.
    #[arg(long, conflicts_with = "model")]
    shape: Option<String>,
    /// Dense projections instead of ternary (the FP baseline of the same shape).
    #[arg(long, value_enum, requires = "shape")]
    dense: Option<DenseArg>,
    /// Only the first K blocks of the shape (a whole-layer slice with the real widths, for
    /// shapes that do not fit in memory; `tern bench paper` scales two slices to the whole).
    #[arg(long, requires = "shape")]
    layers: Option<usize>,
    /// Ternary compute layout.
    #[arg(long, value_enum, default_value_t = LayoutArg::Tern2)]
    layout: LayoutArg,
    /// LM head: f16 (the checkpoint's; tied embeddings for a synthetic shape) or int8.
    #[arg(long, value_enum, default_value_t = HeadArg::F16)]
    head: HeadArg,
    /// Prompt lengths to time (ppN rows).
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    prompt: Vec<usize>,
    /// Generation lengths to time (tgN rows).
    #[arg(long, value_delimiter = ',', default_value = "128")]
    gen: Vec<usize>,
    /// KV cache element type.
    #[arg(long, value_enum, default_value_t = KvArg::F32)]
    kv_type: KvArg,
    /// Cached tokens before each tgN run (llama-bench's -d), filled with random keys and
    /// values instead of a prefill (attention's time does not depend on them).
    #[arg(long, default_value_t = 0)]
    depth: usize,
    /// Repetitions per row (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// JSON Lines instead of a table.
    #[arg(long)]
    json: bool,
    /// After the timed runs, decode once more with a per-phase clock and print where a
    /// token's time goes (projections with their effective read bandwidth).
    #[arg(long)]
    profile: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let (threads, note) = resolve_threads(args.threads);
    if let Some(n) = note {
        eprintln!("tern: {n}");
    }
    let (model, name) = match &args.shape {
        Some(shape) => (synthetic(args, shape)?, shape.clone()),
        None => {
            let m = ModelArgs {
                model: args.model.clone(),
                threads,
                ctx: 0,
                layout: args.layout,
                head: args.head,
                kv_type: args.kv_type,
            };
            let (loaded, path) = m.load()?;
            (loaded.model, path.display().to_string())
        }
    };
    let pool = ThreadPool::new(threads);
    let weights = model.layers[0].q.type_name();
    let longest = args
        .prompt
        .iter()
        .chain(&args.gen)
        .copied()
        .max()
        .unwrap_or(1);
    let mut state = State::with_kv_type(
        &model.config,
        (longest + args.depth).min(model.config.max_seq_len),
        512,
        threads,
        args.kv_type.into(),
    )?;
    let mut rng = Rng::new(7);
    let vocab = model.config.vocab_size as u64;
    if !args.json {
        println!(
            "model {name} ({weights}, head {}), {} threads, {:.2} GB of weights read per token",
            model.head_type(),
            threads,
            model.bytes_per_token() as f64 / 1e9
        );
        println!("| test   |   tokens/s | ms/token | ");
        println!("|--------|-----------:|---------:|");
    }
    let mut rows = Vec::new();
    for &n in &args.prompt {
        let tokens: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
        let secs = median_of(args.reps, || {
            state.reset();
            let t = Instant::now();
            model
                .forward(&tokens, &mut state, Logits::Last, &pool)
                .map(|_| t.elapsed().as_secs_f64())
        })?;
        rows.push((format!("pp{n}"), n as f64 / secs));
    }
    // Peak memory of the model and its state (read before the bandwidth probe's buffer exists;
    // decode allocates nothing).
    let rss = peak_rss_bytes();
    // Decode is judged against the read bandwidth measured beside it (one probe per rep).
    let probe = crate::bench_kernels::probe_buffer(512 << 20);
    let mut bw = Vec::new();
    // What decoding cost (CPU time; RAPL energy and instructions where the machine gives
    // them), summed over the tg runs' decode loops only.
    let meter = Meter::open();
    let mut costs = Vec::new();
    // One untimed decode first (llama-bench's warm-up): first touches of the cache and
    // scratch, the pool's first wake-ups.
    if !args.gen.is_empty() {
        state.reset();
        for _ in 0..4 {
            let t = rng.below(vocab) as u32;
            model.forward(&[t], &mut state, Logits::Last, &pool)?;
        }
    }
    for &n in &args.gen {
        let mut cost = Cost::default();
        let secs = median_of(args.reps, || {
            bw.push(crate::bench_kernels::bandwidth_sample(&probe, &pool));
            state.reset();
            if args.depth > 0 {
                state.fill_random(args.depth, 11)?;
            }
            let mut tok = rng.below(vocab) as u32;
            let before = meter.read();
            let t = Instant::now();
            for _ in 0..n {
                let logits = model.forward(&[tok], &mut state, Logits::Last, &pool)?;
                tok = argmax(logits);
            }
            let secs = t.elapsed().as_secs_f64();
            cost.add(&meter.since(&before));
            Ok(secs)
        })?;
        costs.push(cost.per(n * args.reps.max(1)));
        let test = if args.depth > 0 {
            format!("tg{n}@d{}", args.depth)
        } else {
            format!("tg{n}")
        };
        rows.push((test, n as f64 / secs));
    }
    bw.sort_by(|a, b| a.total_cmp(b));
    let bandwidth = bw.get(bw.len() / 2).copied();
    let mut costs = costs.into_iter();
    let weight_bytes = model.weight_bytes();
    for (test, tps) in rows {
        let cost = test.starts_with("tg").then(|| costs.next()).flatten();
        // Share of the roofline: bytes a token reads (weights, plus the KV cache averaged over
        // the run) per second over the read bandwidth.
        let read = test
            .strip_prefix("tg")
            .and_then(|n| n.split('@').next()?.parse().ok())
            .map(|n| model.bytes_per_token() as f64 + kv_bytes_per_token(&state, n, args.depth));
        let roofline = bandwidth.zip(read).map(|(b, read)| read * tps / 1e9 / b);
        if args.json {
            let mut o = serde_json::json!({
                "test": test, "model": name, "weights": weights, "head": model.head_type(),
                "threads": threads, "tokens_per_s": tps, "peak_rss_bytes": rss,
                "bytes_per_token": model.bytes_per_token(),
                "kv_type": KvType::from(args.kv_type).name(), "depth": args.depth,
                "weight_bytes": weight_bytes, "layers": model.config.num_layers,
                "reps": args.reps.max(1),
            });
            if let Some(c) = &cost {
                o["cpu_s_per_token"] = c.cpu_s.into();
                o["energy_j_per_token"] = c.joules.into();
                o["instructions_per_token"] = c.instructions.into();
                o["counters"] = meter.sources();
            }
            if let (Some(r), Some(b)) = (roofline, bandwidth) {
                o["read_bandwidth_gb_per_s"] = b.into();
                o["roofline_fraction"] = r.into();
            }
            println!("{o}");
        } else {
            let r = roofline.map_or(String::new(), |r| {
                format!(" {:.0}% of the read-bandwidth roofline", 100.0 * r)
            });
            println!("| {test:<6} | {tps:>10.2} | {:>8.2} |{r}", 1e3 / tps);
        }
    }
    if !args.json {
        if let Some(b) = bandwidth {
            println!("read bandwidth {b:.1} GB/s (median of probes beside the tg runs)");
        }
        println!("peak RSS {:.2} GB", rss as f64 / 1e9);
    }
    if let (true, Some(&n)) = (args.profile, args.gen.first()) {
        state.reset();
        if args.depth > 0 {
            state.fill_random(args.depth, 11)?;
        }
        state.set_profiling(true);
        let mut tok = rng.below(vocab) as u32;
        for _ in 0..n {
            tok = argmax(model.forward(&[tok], &mut state, Logits::Last, &pool)?);
        }
        print_profile(&model, &state, n, args.depth, bandwidth);
        state.set_profiling(false);
    }
    Ok(())
}

/// Bytes of K and V a decode step reads, averaged over steps at positions `0..n`.
/// KV bytes a token of a tgN run after `depth` cached tokens reads, on average.
fn kv_bytes_per_token(state: &State, n: usize, depth: usize) -> f64 {
    state.kv_bytes_per_position() as f64 * (depth as f64 + (n + 1) as f64 / 2.0)
}

/// One line per phase: ms per token, share, and for projections the read bandwidth reached.
fn print_profile(model: &Model, state: &State, n: usize, depth: usize, bw: Option<f64>) {
    let p = state.profile();
    let sum = |f: &dyn Fn(&tern_model::Layer) -> usize| -> f64 {
        model.layers.iter().map(f).sum::<usize>() as f64
    };
    let bytes = [
        0.0,
        sum(&|l| l.q.byte_len() + l.k.byte_len() + l.v.byte_len()),
        0.0,
        kv_bytes_per_token(state, n, depth),
        sum(&|l| l.o.byte_len()),
        sum(&|l| l.gate.byte_len() + l.up.byte_len()),
        sum(&|l| l.down.byte_len()),
        model.head_bytes() as f64,
    ];
    let total: u64 = p.ns.iter().sum();
    println!("\nprofile of tg{n} (clock per phase; the phases add up to the whole step):");
    println!("| phase | ms/token | share | MB read/token | GB/s | share of probe |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, name) in tern_model::forward::Profile::PHASES.iter().enumerate() {
        let ms = p.ns[i] as f64 / 1e6 / n as f64;
        let share = 100.0 * p.ns[i] as f64 / total.max(1) as f64;
        let (mb, rate) = if bytes[i] > 0.0 {
            let gbs = bytes[i] / (ms / 1e3) / 1e9;
            let of = bw.map_or(String::new(), |b| format!("{:.0}%", 100.0 * gbs / b));
            (format!("{:.1}", bytes[i] / 1e6), format!("{gbs:.1} | {of}"))
        } else {
            (String::new(), " | ".into())
        };
        println!("| {name} | {ms:.3} | {share:.1}% | {mb} | {rate} |");
    }
    println!("| total | {:.3} | | | | |", total as f64 / 1e6 / n as f64);
}

fn synthetic(args: &Args, shape: &str) -> Result<Model> {
    let mut config = tern_model::shapes::named(shape).with_context(|| {
        let names: Vec<&str> = tern_model::shapes::NAMES.iter().map(|n| n.0).collect();
        format!(
            "unknown shape {shape:?} (expected one of {})",
            names.join(", ")
        )
    })?;
    if let Some(k) = args.layers {
        if k == 0 || k > config.num_layers {
            bail!(
                "--layers {k}: shape {shape} has {} layers",
                config.num_layers
            );
        }
        config.num_layers = k;
    }
    let weights = match args.dense {
        None => SyntheticWeights::Ternary(args.layout.into()),
        Some(DenseArg::F16) => SyntheticWeights::F16,
        Some(DenseArg::F32) => SyntheticWeights::F32,
    };
    let head = match args.head {
        HeadArg::F16 => SyntheticHead::Tied,
        HeadArg::Int8 => SyntheticHead::Int8,
    };
    let need = synthetic_bytes(&config, weights);
    if let Some(avail) = mem_available_bytes() {
        if need > avail * 9 / 10 {
            bail!(
                "shape {shape} needs about {:.1} GB of weights; this machine has {:.1} GB available",
                need as f64 / 1e9,
                avail as f64 / 1e9
            );
        }
    }
    Ok(Model::synthetic(config, weights, head, 1))
}

fn median_of(
    reps: usize,
    mut f: impl FnMut() -> Result<f64, tern_model::ModelError>,
) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..reps.max(1) {
        v.push(f()?);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[v.len() / 2])
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Peak resident set size of this process (Linux `VmHWM`), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    read_status_kb("/proc/self/status", "VmHWM:").unwrap_or(0) * 1024
}

pub fn mem_available_bytes() -> Option<usize> {
    read_status_kb("/proc/meminfo", "MemAvailable:").map(|kb| kb as usize * 1024)
}

fn read_status_kb(path: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
