//! `tern bench kernels`: every kernel on the shapes of real models, side by side in one run.
//!
//! Each matrix is replicated until the copies exceed the last-level cache several times and
//! calls cycle through them, so a GEMV reads its weights from DRAM as it does in a real
//! decode (one pass over every matrix per token), not from a warm cache.

use anyhow::{bail, Result};
use std::time::Instant;
use tern_kernels::actquant::{quantize_acts, QuantizedActs};
use tern_kernels::dense;
use tern_kernels::rng::Rng;
use tern_kernels::ternary::lut::{LutTables, LutTernary};
use tern_kernels::ternary::{self, Layout, PackedTernary};
use tern_kernels::{Isa, TernaryMatrix, ThreadPool};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A short run: fewer shapes, token counts and repetitions.
    #[arg(long)]
    quick: bool,
    /// JSON Lines (one object per row) instead of a table.
    #[arg(long)]
    json: bool,
    /// Model shapes to run: comma-separated from 2b4t, 3b, 70b.
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Token counts (1 = decode GEMV, more = GEMM).
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<usize>>,
    /// Thread counts; 0 means all cores.
    #[arg(long, value_delimiter = ',')]
    threads: Option<Vec<usize>>,
    /// Kernels: comma-separated from tern2, tern3, lut2 (decode only), f16, f32.
    #[arg(long, value_delimiter = ',')]
    kernels: Option<Vec<String>>,
    /// Timed samples per row (the median is reported).
    #[arg(long)]
    samples: Option<usize>,
    /// Bytes of weights to cycle through per row, in MiB (default: 4x the 32 MiB L3 of this
    /// machine class, so reads come from DRAM).
    #[arg(long, default_value_t = 128)]
    cold_mib: usize,
}

const SHAPES: &[(&str, &[(usize, usize)])] = &[
    (
        "2b4t",
        &[(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)],
    ),
    ("3b", &[(3200, 3200), (8640, 3200), (3200, 8640)]),
    (
        "70b",
        &[(8192, 8192), (1024, 8192), (28672, 8192), (8192, 28672)],
    ),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    Ternary(Layout),
    /// The lookup-table GEMV experiment (decode only).
    Lut,
    F16,
    F32,
}

impl Kernel {
    fn name(self) -> String {
        match self {
            Kernel::Ternary(l) => format!("ternary/{}", l.name()),
            Kernel::Lut => "ternary/lut2".into(),
            Kernel::F16 => "f16".into(),
            Kernel::F32 => "f32".into(),
        }
    }
    fn parse(s: &str) -> Result<Kernel> {
        Ok(match s {
            "f16" => Kernel::F16,
            "f32" => Kernel::F32,
            "lut2" | "ternary/lut2" => Kernel::Lut,
            _ => match Layout::from_name(s.trim_start_matches("ternary/")) {
                Some(l) => Kernel::Ternary(l),
                None => bail!("unknown kernel {s:?} (expected tern2, tern3, lut2, f16 or f32)"),
            },
        })
    }
}

/// The weights of one kernel for one shape, replicated `copies` times.
enum Weights {
    Ternary(Vec<PackedTernary>),
    Lut(Vec<LutTernary>),
    F16(Vec<Vec<half::f16>>),
    F32(Vec<Vec<f32>>),
}

struct Row {
    kernel: String,
    m: usize,
    k: usize,
    n: usize,
    threads: usize,
    seconds: f64,
    weight_bytes: usize,
}

pub fn run(args: &Args) -> Result<()> {
    let all_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let models: Vec<String> = match &args.models {
        Some(m) => m.clone(),
        None if args.quick => vec!["2b4t".into()],
        None => SHAPES.iter().map(|s| s.0.to_string()).collect(),
    };
    let tokens = args.tokens.clone().unwrap_or(if args.quick {
        vec![1, 64]
    } else {
        vec![1, 8, 64, 512]
    });
    let threads: Vec<usize> = args
        .threads
        .clone()
        .unwrap_or(vec![1, 0])
        .into_iter()
        .map(|t| if t == 0 { all_threads } else { t })
        .collect();
    let kernels: Vec<Kernel> = match &args.kernels {
        Some(k) => k.iter().map(|s| Kernel::parse(s)).collect::<Result<_>>()?,
        None => vec![
            Kernel::Ternary(Layout::Tern2),
            Kernel::Ternary(Layout::Tern3),
            Kernel::Lut,
            Kernel::F16,
            Kernel::F32,
        ],
    };
    let samples = args
        .samples
        .unwrap_or(if args.quick { 3 } else { 5 })
        .max(1);
    let mut shapes = Vec::new();
    for m in &models {
        match SHAPES.iter().find(|s| s.0 == m) {
            Some(s) => shapes.extend(s.1.iter().copied()),
            None => bail!("unknown model {m:?} (expected 2b4t, 3b or 70b)"),
        }
    }
    if args.quick && args.models.is_none() {
        shapes.truncate(2);
    }
    let cold_bytes = args.cold_mib << 20;

    if !args.json {
        println!(
            "tern bench kernels: isa {}, {} cores, {} samples per row (median), weights cycled over >= {} MiB",
            Isa::detect().name(),
            all_threads,
            samples,
            args.cold_mib
        );
    }
    let pools: Vec<ThreadPool> = threads.iter().map(|&t| ThreadPool::new(t)).collect();

    // The roofline: read bandwidth per thread count (measured again beside every decode row).
    let probe = probe_buffer(if args.quick { 256 << 20 } else { 1 << 30 });
    let mut bandwidth = Vec::new();
    for pool in &pools {
        let mut v: Vec<f64> = (0..samples.max(3))
            .map(|_| bandwidth_sample(&probe, pool))
            .collect();
        let gbs = median(&mut v);
        bandwidth.push(gbs);
        emit_bandwidth(args.json, pool.threads(), gbs);
    }

    let mut rng = Rng::new(42);
    for &(m, k) in &shapes {
        let weights: Vec<(Kernel, Weights)> = kernels
            .iter()
            .map(|&kn| (kn, make_weights(kn, m, k, cold_bytes, &mut rng)))
            .collect();
        for &n in &tokens {
            let x: Vec<f32> = (0..n * k).map(|_| rng.unit_f32()).collect();
            for (pi, pool) in pools.iter().enumerate() {
                // The lookup-table kernel is a GEMV: it has no prefill path to compare.
                let active: Vec<&(Kernel, Weights)> = weights
                    .iter()
                    .filter(|(kn, _)| n == 1 || *kn != Kernel::Lut)
                    .collect();
                let cases: Vec<Case> = active
                    .iter()
                    .map(|(_, w)| Case {
                        weights: w,
                        m,
                        k,
                        n,
                        x: &x,
                    })
                    .collect();
                // Samples go round-robin over the kernels (and, for decode, the bandwidth
                // probe), so a noisy neighbour on this shared machine hits all of them alike
                // and the ratios stay meaningful.
                let mut scratch: Vec<(Scratch, usize)> =
                    cases.iter().map(|c| c.calibrate(pool)).collect();
                let mut times = vec![Vec::new(); cases.len()];
                let mut bw_samples = Vec::new();
                for _ in 0..samples {
                    if n == 1 {
                        bw_samples.push(bandwidth_sample(&probe, pool));
                    }
                    for (i, c) in cases.iter().enumerate() {
                        let (s, calls) = &mut scratch[i];
                        times[i].push(c.sample(s, *calls, pool));
                    }
                }
                if !bw_samples.is_empty() {
                    bandwidth[pi] = median(&mut bw_samples);
                }
                let rows: Vec<Row> = active
                    .iter()
                    .zip(&mut times)
                    .map(|((kn, w), t)| Row {
                        kernel: kn.name(),
                        m,
                        k,
                        n,
                        threads: pool.threads(),
                        seconds: median(t),
                        weight_bytes: weight_bytes(w),
                    })
                    .collect();
                for r in &rows {
                    let base = |name: &str| {
                        rows.iter()
                            .find(|b| b.kernel == name)
                            .map(|b| b.seconds / r.seconds)
                    };
                    emit_row(args.json, r, bandwidth[pi], base("f16"), base("f32"));
                }
            }
        }
    }
    if !args.json {
        println!("call overhead (hot, 640x2560 ternary/tern2, n=1):");
    }
    for pool in &pools {
        let us = call_overhead(pool, &mut rng) * 1e6;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"kernel": "call_overhead/tern2", "m": 640, "k": 2560, "n": 1, "threads": pool.threads(), "seconds": us / 1e6})
            );
        } else {
            println!(
                "  threads {}: {:.1} us per call (weights and activations in cache)",
                pool.threads(),
                us
            );
        }
    }
    Ok(())
}

fn weight_bytes(w: &Weights) -> usize {
    match w {
        Weights::Ternary(v) => v[0].byte_len(),
        Weights::Lut(v) => v[0].byte_len(),
        Weights::F16(v) => v[0].len() * 2,
        Weights::F32(v) => v[0].len() * 4,
    }
}

fn make_weights(kernel: Kernel, m: usize, k: usize, cold_bytes: usize, rng: &mut Rng) -> Weights {
    let bytes = match kernel {
        Kernel::Ternary(l) => ((m * k) as f64 * l.bits_per_weight() / 8.0) as usize,
        Kernel::Lut => m * k / 4,
        Kernel::F16 => m * k * 2,
        Kernel::F32 => m * k * 4,
    };
    let copies = cold_bytes.div_ceil(bytes.max(1)).max(1);
    match kernel {
        Kernel::Ternary(l) => {
            let p = PackedTernary::pack(&TernaryMatrix::random(m, k, 0.02, rng), l);
            Weights::Ternary(vec![p; copies])
        }
        Kernel::Lut => {
            let p = LutTernary::pack(&TernaryMatrix::random(m, k, 0.02, rng));
            Weights::Lut(vec![p; copies])
        }
        Kernel::F16 => {
            let w: Vec<half::f16> = (0..m * k)
                .map(|_| half::f16::from_f32(rng.unit_f32() * 0.02))
                .collect();
            Weights::F16((0..copies).map(|_| huge_copy(&w)).collect())
        }
        Kernel::F32 => {
            let w: Vec<f32> = (0..m * k).map(|_| rng.unit_f32() * 0.02).collect();
            Weights::F32((0..copies).map(|_| huge_copy(&w)).collect())
        }
    }
}

/// A copy of `src` in memory advised for huge pages, as tern's own weight buffers are, so
/// dense and ternary kernels stream under the same paging.
fn huge_copy<T: Copy>(src: &[T]) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(src.len());
    tern_kernels::aligned::advise_huge_pages(v.as_ptr().cast(), std::mem::size_of_val(src));
    v.extend_from_slice(src);
    v
}

fn copies(w: &Weights) -> usize {
    match w {
        Weights::Ternary(v) => v.len(),
        Weights::Lut(v) => v.len(),
        Weights::F16(v) => v.len(),
        Weights::F32(v) => v.len(),
    }
}

/// One timed configuration: weights (all copies), shape and input.
struct Case<'a> {
    weights: &'a Weights,
    m: usize,
    k: usize,
    n: usize,
    x: &'a [f32],
}

/// Reusable outputs of one case.
struct Scratch {
    q: QuantizedActs,
    tables: LutTables,
    y: Vec<f32>,
}

impl Case<'_> {
    /// One BitLinear-style call on copy `i`: ternary includes quantizing its input (a real
    /// layer pays for it).
    fn call(&self, i: usize, s: &mut Scratch, pool: &ThreadPool) {
        let (m, k, n, x, y) = (self.m, self.k, self.n, self.x, &mut s.y);
        match self.weights {
            Weights::Ternary(v) => {
                quantize_acts(x, n, k, &mut s.q, pool);
                ternary::matmul(&v[i], &s.q, y, pool);
            }
            Weights::Lut(v) => {
                quantize_acts(x, n, k, &mut s.q, pool);
                for t in 0..n {
                    LutTernary::build_tables(&s.q, t, &mut s.tables);
                    v[i].gemv(
                        &s.q,
                        t,
                        &s.tables,
                        &mut y[t * m..(t + 1) * m],
                        pool,
                        Isa::detect(),
                    );
                }
            }
            Weights::F16(v) => dense::matmul_f16(&v[i], m, k, x, n, y, pool),
            Weights::F32(v) => dense::matmul_f32(&v[i], m, k, x, n, y, pool),
        }
    }

    /// Warms up (one pass over the copies) and picks how many calls one sample makes: every
    /// copy at least once and at least ~50 ms.
    fn calibrate(&self, pool: &ThreadPool) -> (Scratch, usize) {
        let mut s = Scratch {
            q: QuantizedActs::new(),
            tables: LutTables::default(),
            y: vec![0f32; self.n * self.m],
        };
        let copies = copies(self.weights);
        let t0 = Instant::now();
        for i in 0..copies {
            self.call(i, &mut s, pool);
        }
        let per_call = t0.elapsed().as_secs_f64() / copies as f64;
        (s, copies.max((0.05 / per_call.max(1e-9)) as usize))
    }

    /// Seconds per call, averaged over one sample of `calls` calls.
    fn sample(&self, s: &mut Scratch, calls: usize, pool: &ThreadPool) -> f64 {
        let copies = copies(self.weights);
        let t = Instant::now();
        for i in 0..calls {
            self.call(i % copies, s, pool);
        }
        let secs = t.elapsed().as_secs_f64() / calls as f64;
        std::hint::black_box(&s.y);
        secs
    }

    /// Median seconds per call over `samples` samples.
    fn time(&self, pool: &ThreadPool, samples: usize) -> f64 {
        let (mut s, calls) = self.calibrate(pool);
        let mut times: Vec<f64> = (0..samples)
            .map(|_| self.sample(&mut s, calls, pool))
            .collect();
        median(&mut times)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(crate) fn probe_buffer(bytes: usize) -> Vec<u8> {
    let mut rng = Rng::new(1);
    (0..bytes / 8)
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .collect()
}

/// GB/s of one full read of `buf` by every thread of `pool`.
pub(crate) fn bandwidth_sample(buf: &[u8], pool: &ThreadPool) -> f64 {
    let t = Instant::now();
    std::hint::black_box(tern_kernels::bandwidth::read_all(buf, pool));
    buf.len() as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Seconds per decode-style call with everything in cache: the fixed cost of one layer call
/// (quantization, pool dispatch, epilogue) that decode pays ~200 times per token.
fn call_overhead(pool: &ThreadPool, rng: &mut Rng) -> f64 {
    let (m, k) = (640, 2560);
    let w = Weights::Ternary(vec![PackedTernary::pack(
        &TernaryMatrix::random(m, k, 0.02, rng),
        Layout::Tern2,
    )]);
    let x: Vec<f32> = (0..k).map(|_| rng.unit_f32()).collect();
    let case = Case {
        weights: &w,
        m,
        k,
        n: 1,
        x: &x,
    };
    case.time(pool, 7)
}

fn emit_bandwidth(json: bool, threads: usize, gbs: f64) {
    if json {
        println!(
            "{}",
            serde_json::json!({"kernel": "read_bandwidth", "m": 0, "k": 0, "n": 0, "threads": threads, "seconds": 0.0, "gb_per_s": gbs, "gops": 0.0})
        );
    } else {
        println!("read bandwidth, {threads} thread(s): {gbs:.1} GB/s");
    }
}

fn emit_row(json: bool, r: &Row, bw: f64, vs_f16: Option<f64>, vs_f32: Option<f64>) {
    let gbs = r.weight_bytes as f64 / r.seconds / 1e9;
    let gops = 2.0 * (r.m * r.k * r.n) as f64 / r.seconds / 1e9;
    // Decode against an ideal f16 GEMV that streams at the measured bandwidth: the ratio no
    // f16 kernel could beat, so it does not flatter ternary when our f16 kernel falls short.
    let vs_f16_roofline = (r.n == 1).then(|| (r.m * r.k * 2) as f64 / (bw * 1e9) / r.seconds);
    if json {
        let mut o = serde_json::json!({
            "kernel": r.kernel, "m": r.m, "k": r.k, "n": r.n, "threads": r.threads,
            "seconds": r.seconds, "gb_per_s": gbs, "gops": gops,
            "weight_bytes": r.weight_bytes, "read_bandwidth_gb_per_s": bw,
            "bandwidth_fraction": gbs / bw,
        });
        for (key, v) in [
            ("speedup_vs_f16", vs_f16),
            ("speedup_vs_f32", vs_f32),
            ("speedup_vs_f16_roofline", vs_f16_roofline),
        ] {
            if let Some(v) = v {
                o[key] = v.into();
            }
        }
        println!("{o}");
    } else {
        let ratio = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.2}x"));
        println!(
            "{:<14} {:>6}x{:<6} n={:<4} t={} {:>10.1} us {:>6.1} GB/s {:>4.0}% bw {:>7.1} GOPS | vs f16 {:>6} f32 {:>6} f16@bw {:>6}",
            r.kernel,
            r.m,
            r.k,
            r.n,
            r.threads,
            r.seconds * 1e6,
            gbs,
            100.0 * gbs / bw,
            gops,
            ratio(vs_f16),
            ratio(vs_f32),
            ratio(vs_f16_roofline)
        );
    }
}
