//! `tern train`: BitNet b1.58 QAT (or the FP baseline) from a TOML config, with a progress
//! bar, metrics, checkpoints, resume and SIGINT handling; `tern train eval` and
//! `tern train export` work on a finished run.

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tern_train::export::{self, Form};
use tern_train::recipe::Quant;
use tern_train::trainer::{EvalInfo, Observer, StepInfo};
use tern_train::transformer::ProjMode;
use tern_train::{Config, Trainer};

#[derive(ClapArgs)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(ClapArgs)]
struct RunArgs {
    /// TOML config (every field optional; defaults train the bundled model's shape).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Run directory for tokenizer, shards, checkpoints and metrics.
    #[arg(long, short, default_value = "runs/default")]
    out: PathBuf,
    /// Continue the newest checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Training text: files, directories, .jsonl(.gz) (default: the bundled SOTU corpus).
    #[arg(long = "data")]
    data: Vec<String>,
    /// Validation text (default: the last 5% of the training documents).
    #[arg(long = "valid")]
    valid: Vec<String>,
    /// JSONL field holding the text.
    #[arg(long)]
    text_field: Option<String>,
    /// Override train.steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Override model.quant: "b1.58" or "none" (the FP baseline).
    #[arg(long)]
    quant: Option<String>,
}

#[derive(Subcommand)]
enum Action {
    /// Training speed: step time of b1.58 and of the FP twin on random tokens, model FLOPs
    /// utilisation against the measured f32 GEMM rate.
    Bench {
        /// TOML config (default: the bundled model's).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Vocabulary size (the config's tokenizer size by default).
        #[arg(long)]
        vocab: Option<usize>,
        /// Timed steps per model (median reported).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// One JSON line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validation loss, perplexity and bits per byte of a run's newest checkpoint, optionally
    /// after post-training quantization (how the paper's PTQ baselines are measured).
    Eval {
        run_dir: PathBuf,
        /// none (as trained), ternary (absmean PTQ), int4 (4-bit, groups of 32).
        #[arg(long, default_value = "none")]
        ptq: String,
        /// Validation windows (0: all).
        #[arg(long, default_value_t = 0)]
        windows: usize,
        /// Evaluate on this text instead of the run's validation split (files, directories,
        /// .jsonl(.gz); tokenized with the run's tokenizer), e.g. LAMBADA passages.
        #[arg(long = "data")]
        data: Vec<String>,
        /// JSONL field holding the text.
        #[arg(long, default_value = "text")]
        text_field: String,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a Hugging Face directory (config.json, model.safetensors, tokenizer files)
    /// that `tern run`, `tern convert` and transformers' BitNetForCausalLM load.
    Export {
        run_dir: PathBuf,
        #[arg(long, short)]
        out: PathBuf,
        /// bf16 (master weights, online quantization), f32, or packed (ternary uint8 +
        /// weight_scale, offline); FP runs export dense bf16/f32.
        #[arg(long, default_value = "bf16")]
        form: String,
        /// A specific checkpoint instead of the newest.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Post-training quantization of an FP run: ternary (absmean, exported as a b1.58
        /// model) or int4 (per group of 32, stored dequantized).
        #[arg(long)]
        ptq: Option<String>,
    },
}

pub fn run(args: &Args) -> Result<()> {
    // candle sizes its pool by *physical* cores as it detects them, which is 1 on some VMs
    // that have 2; use every available CPU unless the user said otherwise. Set before any
    // candle or rayon call, while this process is single-threaded.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // Training allocates and frees tens of MB per op; above glibc's default mmap threshold
    // each allocation is a fresh mapping whose pages fault in zeroed (8% of a step in perf).
    // Keeping such blocks on the heap lets them be reused.
    // SAFETY: mallopt only tunes allocator parameters; it is called before any other thread
    // exists, and both values are within glibc's documented ranges.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
    match &args.action {
        Some(Action::Eval {
            run_dir,
            ptq,
            windows,
            data,
            text_field,
            json,
        }) => eval(run_dir, ptq, *windows, data, text_field, *json),
        Some(Action::Export {
            run_dir,
            out,
            form,
            checkpoint,
            ptq,
        }) => {
            let ptq = match ptq.as_deref() {
                None | Some("none") => None,
                Some("ternary") => Some(export::Ptq::Ternary),
                Some("int4") => Some(export::Ptq::Int4 { group: 32 }),
                Some(other) => bail!("--ptq {other:?}: expected ternary or int4"),
            };
            let form = match form.as_str() {
                "bf16" => Form::Bf16,
                "f32" => Form::F32,
                "packed" => Form::Packed,
                other => bail!("--form {other:?}: expected bf16, f32 or packed"),
            };
            let ck = match checkpoint {
                Some(p) => p.clone(),
                None => latest(run_dir)?,
            };
            export::export_hf_ptq(&ck, &run_dir.join("tokenizer.json"), out, form, ptq)
                .with_context(|| format!("exporting {}", ck.display()))?;
            eprintln!("tern: wrote {}", out.display());
            Ok(())
        }
        Some(Action::Bench {
            config,
            vocab,
            steps,
            json,
        }) => bench(config.as_deref(), *vocab, *steps, *json),
        None => train(&args.run),
    }
}

fn bench(config: Option<&Path>, vocab: Option<usize>, steps: usize, json: bool) -> Result<()> {
    let c = match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let vocab = vocab.unwrap_or(c.tokenizer.vocab_size);
    let r = tern_train::bench::run(&c, vocab, steps.max(1))?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "params": r.params, "flops_per_token": r.flops_per_token,
                "gemm_gflops": r.gemm_gflops, "threads": threads,
                "b158_step_s": r.b158.step_s, "b158_tokens_per_s": r.b158.tokens_per_s,
                "b158_mfu": r.b158.gflops / r.gemm_gflops,
                "fp_step_s": r.fp.step_s, "fp_tokens_per_s": r.fp.tokens_per_s,
                "fp_mfu": r.fp.gflops / r.gemm_gflops,
                "b158_over_fp": r.b158.step_s / r.fp.step_s,
            })
        );
        return Ok(());
    }
    println!(
        "model: {} parameters, {:.1} MFLOP per training token; {} threads; f32 GEMM {:.1} GFLOP/s",
        r.params,
        r.flops_per_token / 1e6,
        threads,
        r.gemm_gflops
    );
    println!("| model | step (s) | tokens/s | GFLOP/s | MFU vs GEMM |");
    println!("|---|---|---|---|---|");
    for t in [&r.b158, &r.fp] {
        println!(
            "| {:?} | {:.3} | {:.0} | {:.1} | {:.0}% |",
            t.quant,
            t.step_s,
            t.tokens_per_s,
            t.gflops,
            100.0 * t.gflops / r.gemm_gflops
        );
    }
    println!("b1.58 step / FP step: {:.2}x", r.b158.step_s / r.fp.step_s);
    Ok(())
}

fn latest(run_dir: &Path) -> Result<PathBuf> {
    tern_train::trainer::RunDir(run_dir.to_path_buf())
        .latest_checkpoint()
        .with_context(|| format!("{}: no checkpoint in checkpoints/", run_dir.display()))
}

fn train(a: &RunArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("\ntern: second interrupt, exiting without saving");
                std::process::exit(130);
            }
            eprintln!("\ntern: interrupt: saving a checkpoint after this step (again to abort)");
        })
        .context("installing the SIGINT handler")?;
    }
    let mut obs = Progress::new();
    let mut trainer = if a.resume {
        if a.config.is_some() || !a.data.is_empty() || a.quant.is_some() {
            bail!("--resume continues the run as configured; only --steps may change");
        }
        let t = Trainer::resume(&a.out, a.steps)?;
        obs.message(&format!("resuming {} at step {}", a.out.display(), t.step));
        t
    } else {
        let mut config = match &a.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if !a.data.is_empty() {
            config.data.train = a.data.clone();
        }
        if !a.valid.is_empty() {
            config.data.valid = a.valid.clone();
        }
        if let Some(f) = &a.text_field {
            config.data.text_field = f.clone();
        }
        if let Some(s) = a.steps {
            config.train.steps = s;
        }
        if let Some(q) = &a.quant {
            config.model.quant = match q.as_str() {
                "b1.58" | "ternary" => Quant::B158,
                "none" | "fp" => Quant::None,
                other => bail!("--quant {other:?}: expected b1.58 or none"),
            };
        }
        Trainer::create(config, &a.out, &mut obs)?
    };
    let m = &trainer.model;
    obs.message(&format!(
        "model: {} parameters ({} in projections), quant {:?}, {} steps of {} x {} tokens",
        m.num_params(),
        m.num_projection_params(),
        trainer.config.model.quant,
        trainer.config.train.steps,
        trainer.config.train.batch_size,
        trainer.config.train.seq_len
    ));
    trainer.run(&stop, &mut obs)?;
    obs.finish();
    Ok(())
}

fn eval(
    run_dir: &Path,
    ptq: &str,
    windows: usize,
    data: &[String],
    text_field: &str,
    json: bool,
) -> Result<()> {
    let mut trainer = Trainer::resume(run_dir, None)?;
    trainer.config.train.eval_windows = windows;
    if !data.is_empty() {
        trainer.valid = tern_train::trainer::external_shard(&trainer, data, text_field)?;
    }
    let mode = match ptq {
        "none" => trainer.mode(),
        "ternary" => ProjMode::B158,
        "int4" => ProjMode::Int4 { group: 32 },
        other => bail!("--ptq {other:?}: expected none, ternary or int4"),
    };
    let e = trainer.evaluate(mode)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "run": run_dir.display().to_string(), "step": e.step, "ptq": ptq,
                "data": if data.is_empty() { "validation split".to_string() } else { data.join(",") },
                "quant": format!("{:?}", trainer.config.model.quant),
                "val_loss": e.loss, "val_ppl": e.ppl, "val_bpb": e.bpb, "tokens": e.tokens,
            })
        );
    } else {
        println!(
            "{}: step {} ptq {ptq}: loss {:.4}  ppl {:.2}  bpb {:.4}  ({} tokens)",
            run_dir.display(),
            e.step,
            e.loss,
            e.ppl,
            e.bpb,
            e.tokens
        );
    }
    Ok(())
}

/// A progress bar on a terminal, plain log lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    last_eval: Option<EvalInfo>,
}

impl Progress {
    fn new() -> Self {
        Progress {
            bar: None,
            last_eval: None,
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

impl Observer for Progress {
    fn message(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(format!("tern: {msg}")),
            None => eprintln!("tern: {msg}"),
        }
    }

    fn step(&mut self, s: &StepInfo, total: u64) {
        let val = self
            .last_eval
            .as_ref()
            .map_or(String::new(), |e| format!(" val {:.3}", e.loss));
        let text = format!(
            "loss {:.3}{val} lr {:.2e} {:.0} tok/s",
            s.loss, s.lr, s.tokens_per_s
        );
        if std::io::stderr().is_terminal() {
            let bar = self.bar.get_or_insert_with(|| {
                let b = ProgressBar::new(total);
                b.set_style(
                    ProgressStyle::with_template("{pos:>6}/{len} [{bar:30}] {msg} ETA {eta}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                b
            });
            bar.set_position(s.step);
            bar.set_message(text);
        } else if s.step.is_multiple_of(10) || s.step == total {
            eprintln!("tern: step {}/{total} {text}", s.step);
        }
    }

    fn eval(&mut self, e: &EvalInfo) {
        self.message(&format!(
            "step {}: validation loss {:.4}, ppl {:.2}, {:.4} bits/byte",
            e.step, e.loss, e.ppl, e.bpb
        ));
        self.last_eval = Some(e.clone());
    }
}

/// `tern quantize RUN_DIR --method ternary|int4 -o OUT`: post-training quantization of an FP
/// run into a model directory the engine runs (the paper's PTQ baselines).
#[derive(ClapArgs)]
pub struct QuantizeArgs {
    run_dir: PathBuf,
    /// ternary (absmean, per tensor) or int4 (symmetric, groups of 32).
    #[arg(long)]
    method: String,
    #[arg(long, short)]
    out: PathBuf,
}

pub fn quantize(a: &QuantizeArgs) -> Result<()> {
    let ptq = match a.method.as_str() {
        "ternary" => export::Ptq::Ternary,
        "int4" => export::Ptq::Int4 { group: 32 },
        other => bail!("--method {other:?}: expected ternary or int4"),
    };
    let ck = latest(&a.run_dir)?;
    export::export_hf_ptq(
        &ck,
        &a.run_dir.join("tokenizer.json"),
        &a.out,
        Form::F32,
        Some(ptq),
    )
    .with_context(|| format!("quantizing {}", ck.display()))?;
    eprintln!(
        "tern: wrote {} ({} PTQ of {})",
        a.out.display(),
        a.method,
        ck.display()
    );
    Ok(())
}
