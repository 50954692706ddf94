//! `tern bench paper`: BitNet b1.58's cost claims (paper Figure 2, Table 1, Figure 3) checked
//! on this machine. Every shape is measured as BitNet b1.58 (tern2 ternary projections, f16
//! tied head) and as FP16 LLaMA of the same shape, in the same engine with the same threads:
//! decode latency (tgN), prefill speed (ppN), weight bytes, peak RSS, bytes read per token and
//! the share of the read-bandwidth roofline, the paper's arithmetic energy model and what this
//! machine can measure of energy. Each model runs in its own child process
//! (`tern bench model --json`), so peak RSS is its own. A model that does not fit in memory is
//! measured as two whole-layer slices (k1 < k2 of its n blocks, real widths) and extrapolated
//! linearly to n; such cells are labelled "scaled".

mod energy;
mod report;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use tern_kernels::Layout;
use tern_model::model::{synthetic_bytes, SyntheticWeights};
use tern_model::{KvCache, KvType, ModelConfig};

use crate::bench_model::mem_available_bytes;
pub use energy::{token_energy, Arith};

/// The paper's sizes (Table 1 and Figure 2), smallest first.
const PAPER_SHAPES: &str = "700m,1.3b,3b,3.9b,7b,13b,30b,70b";
/// `--quick`: one verdict (13B b1.58 vs 3B FP16) from small slices.
const QUICK_SHAPES: &str = "700m,3b,13b";
/// The paper's verdicts: (larger BitNet b1.58, smaller FP16 LLaMA).
pub const VERDICTS: [(&str, &str); 3] = [("13b", "3b"), ("30b", "7b"), ("70b", "13b")];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Shapes to measure (default: the paper's 700m,1.3b,3b,3.9b,7b,13b,30b,70b; with --quick
    /// 700m,3b,13b).
    #[arg(long, value_delimiter = ',')]
    shapes: Option<Vec<String>>,
    /// A run of about a minute: short prompts and generations, one repetition, models above
    /// 1.5 GB measured as slices of at most 0.6 GB.
    #[arg(long)]
    quick: bool,
    /// Prompt tokens of the prefill figure (ppN); also the context of the energy model.
    #[arg(long)]
    prompt: Option<usize>,
    /// Generated tokens of the decode figure (tgN).
    #[arg(long)]
    gen: Option<usize>,
    /// Repetitions per figure (median); models above 8 GB get one.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// The most a whole model (weights and KV cache) may take before it is measured as slices
    /// (default: 85% of the memory available now).
    #[arg(long, value_parser = crate::serve::parse_bytes)]
    max_memory: Option<usize>,
    /// Weight bytes of the larger of the two slices of a model that does not fit.
    #[arg(long, value_parser = crate::serve::parse_bytes)]
    slice_budget: Option<usize>,
    /// Output directory: report.md, results.jsonl and the PNG charts.
    #[arg(long, short, default_value = "bench-paper")]
    out: PathBuf,
    /// Which models of each shape: b1.58, fp16 or both.
    #[arg(long, value_delimiter = ',', default_value = "b1.58,fp16")]
    models: Vec<String>,
    /// Redraw the report and charts from earlier runs' results.jsonl files (no measuring); a
    /// row of a later file replaces the same shape and model of an earlier one.
    #[arg(long, num_args = 1..)]
    from_jsonl: Vec<PathBuf>,
}

/// What a child `tern bench model --json` reported: its pp and tg rows.
struct Child {
    pp: Value,
    tg: Value,
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

pub fn run(a: &Args) -> Result<()> {
    if !a.from_jsonl.is_empty() {
        let mut rows: Vec<Value> = Vec::new();
        for p in &a.from_jsonl {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            for (i, l) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let r: Value = serde_json::from_str(l)
                    .with_context(|| format!("{} line {}: invalid JSON", p.display(), i + 1))?;
                match rows
                    .iter_mut()
                    .find(|x| x["shape"] == r["shape"] && x["model"] == r["model"])
                {
                    Some(old) => *old = r,
                    None => rows.push(r),
                }
            }
        }
        return report::write_all(&a.out, &rows, None);
    }
    for m in &a.models {
        if m != "b1.58" && m != "fp16" {
            bail!("--models: unknown model {m:?} (b1.58, fp16)");
        }
    }
    let shapes: Vec<String> = match &a.shapes {
        Some(s) => s.clone(),
        None if a.quick => QUICK_SHAPES.split(',').map(String::from).collect(),
        None => PAPER_SHAPES.split(',').map(String::from).collect(),
    };
    for s in &shapes {
        if tern_model::shapes::named(s).is_none() {
            let names: Vec<&str> = tern_model::shapes::NAMES.iter().map(|n| n.0).collect();
            bail!("unknown shape {s:?} (expected one of {})", names.join(", "));
        }
    }
    let (prompt, gen) = match a.quick {
        true => (a.prompt.unwrap_or(64), a.gen.unwrap_or(16)),
        false => (a.prompt.unwrap_or(512), a.gen.unwrap_or(128)),
    };
    let reps = if a.quick { 1 } else { a.reps.max(1) };
    let avail = mem_available_bytes().unwrap_or(8 << 30);
    let max_memory = a.max_memory.unwrap_or(if a.quick {
        1_500_000_000
    } else {
        avail / 100 * 85
    });
    let slice_budget = a
        .slice_budget
        .unwrap_or(if a.quick { 600_000_000 } else { 4_000_000_000 });
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("creating the output directory {}", a.out.display()))?;
    let plan = Plan {
        prompt,
        gen,
        reps,
        threads: a.threads,
        max_memory,
        slice_budget,
    };
    let machine = cpu_name();
    let start = Instant::now();
    let total = shapes.len() * a.models.len();
    let mut rows = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        for (j, model) in a.models.iter().map(String::as_str).enumerate() {
            let step = a.models.len() * i + j + 1;
            let cell = plan.measure(shape, model, |what| {
                eprintln!(
                    "[{step:>2}/{total} {:>5.0}s] {shape} {model}: {what}",
                    start.elapsed().as_secs_f64()
                )
            });
            let mut row = match cell {
                Ok(v) => v,
                Err(e) => {
                    // Never skipped silently: the failure is a row of the report.
                    let msg = crate::error_line(&e);
                    eprintln!("tern: {shape} {model}: {msg}");
                    json!({"shape": shape, "model": model, "error": msg})
                }
            };
            row["machine"] = machine.clone().into();
            rows.push(row);
        }
    }
    let cmd: Vec<String> = std::env::args().collect();
    report::write_all(&a.out, &rows, Some(&cmd.join(" ")))?;
    eprintln!(
        "tern: bench paper took {:.0} s; {} has report.md, results.jsonl and the charts",
        start.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

/// The CPU's model name (`/proc/cpuinfo`), with the ISA extensions that matter here.
pub fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    let name = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let flags = field("flags").unwrap_or_default();
    let has: Vec<&str> = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"]
        .into_iter()
        .filter(|f| flags.split(' ').any(|x| x == *f))
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{name} ({cores} CPUs; {})", has.join(", "))
}

struct Plan {
    prompt: usize,
    gen: usize,
    reps: usize,
    threads: usize,
    max_memory: usize,
    slice_budget: usize,
}

fn weights_of(model: &str) -> SyntheticWeights {
    match model {
        "fp16" => SyntheticWeights::F16,
        _ => SyntheticWeights::Ternary(Layout::Tern2),
    }
}

/// Weight bytes of `c` with `layers` blocks.
fn bytes_with_layers(c: &ModelConfig, layers: usize, w: SyntheticWeights) -> usize {
    let mut c = c.clone();
    c.num_layers = layers;
    synthetic_bytes(&c, w)
}

/// The two slice sizes for a model of `n` blocks: the larger within `budget` weight bytes.
pub fn slice_layers(c: &ModelConfig, w: SyntheticWeights, budget: usize) -> (usize, usize) {
    let n = c.num_layers;
    let fixed = bytes_with_layers(c, 0, w);
    let per_layer = (bytes_with_layers(c, n, w) - fixed) / n.max(1);
    let k2 = (budget.saturating_sub(fixed) / per_layer.max(1)).clamp(2, n.saturating_sub(1).max(2));
    (k2 / 2, k2)
}

impl Plan {
    /// The figures of one model (a shape as b1.58 or FP16), measured whole or scaled.
    fn measure(&self, shape: &str, model: &str, progress: impl Fn(&str)) -> Result<Value> {
        let c = tern_model::shapes::named(shape).context("shape")?;
        let w = weights_of(model);
        let tokens = self.prompt + self.gen;
        let need = synthetic_bytes(&c, w) + KvCache::bytes_for(&c, tokens, KvType::F16);
        // Decoding a model above 8 GB takes over a minute per repetition here: one each.
        let reps = |bytes: usize| if bytes > 8_000_000_000 { 1 } else { self.reps };
        let mut json = if need <= self.max_memory {
            progress(&format!(
                "whole model, {:.2} GB of weights",
                synthetic_bytes(&c, w) as f64 / 1e9
            ));
            let r = self.child(shape, model, None, reps(need))?;
            whole(&r)
        } else {
            let (k1, k2) = slice_layers(&c, w, self.slice_budget);
            progress(&format!(
                "{:.1} GB does not fit in {:.1} GB: slices of {k1} and {k2} of its {} blocks, scaled",
                need as f64 / 1e9,
                self.max_memory as f64 / 1e9,
                c.num_layers
            ));
            let r1 = self.child(shape, model, Some(k1), self.reps)?;
            let r2 = self.child(shape, model, Some(k2), self.reps)?;
            scaled(&r1, &r2, k1, k2, c.num_layers)
        };
        let arith = if model == "fp16" {
            Arith::Fp16
        } else {
            Arith::Ternary
        };
        let e = token_energy(&c, arith, self.prompt);
        let params = energy::projection_macs(&c) + (c.vocab_size * c.hidden_size) as f64;
        let o = json.as_object_mut().expect("object");
        for (k, v) in [
            ("shape", json!(shape)),
            ("model", json!(model)),
            ("params", json!(params)),
            ("layers", json!(c.num_layers)),
            ("prompt", json!(self.prompt)),
            ("gen", json!(self.gen)),
            (
                "energy_model_pj",
                json!({"projections": e.projections, "attention": e.attention,
                       "head": e.head, "total": e.total(), "context": self.prompt}),
            ),
        ] {
            o.insert(k.into(), v);
        }
        progress(&format!(
            "{:.1} ms/token, {:.1} prefill tokens/s, {:.2} GB peak RSS",
            f(&json, "tg_ms_per_token").unwrap_or(f64::NAN),
            f(&json, "pp_tokens_per_s").unwrap_or(f64::NAN),
            f(&json, "peak_rss_bytes").unwrap_or(f64::NAN) / 1e9
        ));
        Ok(json)
    }

    /// One `tern bench model` in a child process.
    fn child(&self, shape: &str, model: &str, layers: Option<usize>, reps: usize) -> Result<Child> {
        let exe = std::env::current_exe().context("finding the tern binary")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "bench",
            "model",
            "--shape",
            shape,
            "--json",
            "--kv-type",
            "f16",
        ])
        .args(["--prompt", &self.prompt.to_string()])
        .args(["--gen", &self.gen.to_string()])
        .args(["--reps", &reps.to_string()])
        .args(["--threads", &self.threads.to_string()]);
        if model == "fp16" {
            cmd.args(["--dense", "f16"]);
        }
        if let Some(k) = layers {
            cmd.args(["--layers", &k.to_string()]);
        }
        let out = cmd.output().context("running tern bench model")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let last = stderr.lines().last().unwrap_or("").trim();
            bail!("tern bench model failed ({}): {last}", out.status);
        }
        let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let find = |p: &str| {
            rows.iter()
                .find(|r| r["test"].as_str().is_some_and(|t| t.starts_with(p)))
                .cloned()
                .with_context(|| format!("tern bench model printed no {p} row"))
        };
        Ok(Child {
            pp: find("pp")?,
            tg: find("tg")?,
        })
    }
}

/// Figures of a model measured whole.
fn whole(r: &Child) -> Value {
    let tg = &r.tg;
    let mut o = json!({
        "how": "measured",
        "weight_bytes": tg["weight_bytes"],
        "peak_rss_bytes": tg["peak_rss_bytes"],
        "tg_ms_per_token": 1e3 / f(tg, "tokens_per_s").unwrap_or(f64::NAN),
        "pp_tokens_per_s": r.pp["tokens_per_s"],
        "bytes_per_token": tg["bytes_per_token"],
        "roofline_fraction": tg["roofline_fraction"],
        "read_bandwidth_gb_per_s": tg["read_bandwidth_gb_per_s"],
        "cpu_s_per_token": tg["cpu_s_per_token"],
        "energy_j_per_token": tg["energy_j_per_token"],
        "instructions_per_token": tg["instructions_per_token"],
        "counters": tg["counters"],
        "threads": tg["threads"],
        "reps": tg["reps"],
    });
    o["weights"] = tg["weights"].clone();
    o
}

/// Figures of an `n`-block model from slices of `k1` and `k2` blocks: every per-token cost
/// and every size is linear in the number of blocks (the embedding, head and final norm are
/// the intercept), so each is extrapolated along the line through the two slices.
fn scaled(r1: &Child, r2: &Child, k1: usize, k2: usize, n: usize) -> Value {
    let line = |a: Option<f64>, b: Option<f64>| -> Option<f64> {
        let (a, b) = (a?, b?);
        Some(a + (b - a) * (n - k1) as f64 / (k2 - k1) as f64)
    };
    let tg = |r: &Child, k: &str| f(&r.tg, k);
    let ms = |r: &Child| tg(r, "tokens_per_s").map(|t| 1e3 / t);
    let pp_s = |r: &Child| f(&r.pp, "tokens_per_s").map(|t| 1.0 / t);
    let field = |k: &str| line(tg(r1, k), tg(r2, k));
    let tg_ms = line(ms(r1), ms(r2));
    let bytes = field("bytes_per_token");
    let bw = tg(r2, "read_bandwidth_gb_per_s");
    let roofline = match (bytes, tg_ms, bw) {
        (Some(b), Some(ms), Some(bw)) => Some(b / (ms / 1e3) / 1e9 / bw),
        _ => None,
    };
    json!({
        "how": "scaled",
        "slices": [k1, k2],
        "weights": r2.tg["weights"],
        "weight_bytes": field("weight_bytes").map(|b| b.round()),
        "peak_rss_bytes": field("peak_rss_bytes").map(|b| b.round()),
        "tg_ms_per_token": tg_ms,
        "pp_tokens_per_s": line(pp_s(r1), pp_s(r2)).map(|s| 1.0 / s),
        "bytes_per_token": bytes.map(|b| b.round()),
        "roofline_fraction": roofline,
        "read_bandwidth_gb_per_s": bw,
        "cpu_s_per_token": field("cpu_s_per_token"),
        "energy_j_per_token": field("energy_j_per_token"),
        "instructions_per_token": field("instructions_per_token").map(|b| b.round()),
        "counters": r2.tg["counters"],
        "threads": r2.tg["threads"],
        "reps": r2.tg["reps"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(k: usize) -> Child {
        // A model whose every figure is 10 + 2k (k blocks), as a slice would report.
        let v = (10 + 2 * k) as f64;
        Child {
            pp: json!({"test": "pp8", "tokens_per_s": 1.0 / v}),
            tg: json!({"test": "tg8", "tokens_per_s": 1e3 / v, "weight_bytes": v,
                       "peak_rss_bytes": v, "bytes_per_token": v, "cpu_s_per_token": v,
                       "read_bandwidth_gb_per_s": 1.0, "energy_j_per_token": null}),
        }
    }

    /// Two slices extrapolate exactly along a line; missing counters stay missing.
    #[test]
    fn slices_scale_linearly() {
        let s = scaled(&child(2), &child(4), 2, 4, 40);
        for k in [
            "weight_bytes",
            "peak_rss_bytes",
            "bytes_per_token",
            "cpu_s_per_token",
            "tg_ms_per_token",
        ] {
            assert!((f(&s, k).unwrap() - 90.0).abs() < 1e-9, "{k}: {}", s[k]);
        }
        assert!((1.0 / f(&s, "pp_tokens_per_s").unwrap() - 90.0).abs() < 1e-9);
        assert!(s["energy_j_per_token"].is_null());
        assert_eq!(s["how"], "scaled");
        // 90 bytes in 90 ms is 1 KB/s: 1e-6 of 1 GB/s.
        assert!((f(&s, "roofline_fraction").unwrap() - 1e-6).abs() < 1e-15);
    }

    /// Slices fit the budget, keep two distinct sizes and stay below the whole model.
    #[test]
    fn slice_sizes_fit_the_budget() {
        let c = tern_model::shapes::named("70b").unwrap();
        let (k1, k2) = slice_layers(&c, SyntheticWeights::F16, 4_000_000_000);
        assert!(1 <= k1 && k1 < k2 && k2 < c.num_layers, "{k1} {k2}");
        assert!(bytes_with_layers(&c, k2, SyntheticWeights::F16) <= 4_000_000_000);
        // A budget below two blocks still gives two slices.
        let (k1, k2) = slice_layers(&c, SyntheticWeights::F16, 1);
        assert_eq!((k1, k2), (1, 2));
    }
}
