//! `tern`: BitNet b1.58 ternary models on CPUs.

mod bench_batch;
mod bench_kernels;
mod bench_model;
mod bench_paper;
mod bench_serve;
mod convert;
mod counters;
mod eval;
mod perplexity;
mod plot;
mod run;
mod serve;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tern", version, about = "BitNet b1.58 (ternary) LLM toolkit", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it.
    Run(run::RunArgs),
    /// Interactive chat with the model's chat template (works with piped stdin).
    Chat(run::ChatArgs),
    /// Full-sequence logits of token ids, as safetensors (parity checks).
    Logits(run::LogitsArgs),
    /// What is in a model: architecture, sizes, tensor types, bytes read per token.
    Info(run::InfoArgs),
    /// Train a BitNet b1.58 model (or its FP baseline) from scratch; eval and export runs.
    Train(train::Args),
    /// Perplexity of a model on a text (non-overlapping windows, as `tern train eval`).
    Perplexity(perplexity::Args),
    /// Zero-shot task accuracy with lm-evaluation-harness's definitions (ARC, HellaSwag,
    /// BoolQ, OpenBookQA, PIQA, WinoGrande, SciQ, LAMBADA; docs/eval.md).
    Eval(eval::Args),
    /// Post-training quantization of an FP training run (ternary or 4-bit), for comparison.
    Quantize(train::QuantizeArgs),
    /// Training and validation loss of several runs on one chart (PNG).
    Plot(plot::Args),
    /// OpenAI-compatible HTTP server (chat, completions, streaming; docs/serving.md).
    Serve(serve::Args),
    /// Convert a model: HF directory -> GGUF (tq2_0, tq1_0, i2_s, f16), GGUF -> GGUF, GGUF -> HF.
    Convert(convert::Args),
    /// Measurements, llama-bench style.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Ternary vs f16 vs f32 GEMV/GEMM on real model shapes, plus the read-bandwidth roofline.
    Kernels(bench_kernels::Args),
    /// Whole-model prompt processing and generation speed (ppN / tgN), ternary or dense.
    Model(bench_model::Args),
    /// Load on an OpenAI-compatible server: throughput, TTFT and inter-token latency at
    /// several concurrencies (tern serve, llama-server, ...).
    Serve(bench_serve::Args),
    /// The paper's Table 3: the largest batch under a memory budget, ternary vs FP16, and
    /// the decode throughput at that batch.
    Batch(bench_batch::Args),
    /// The paper's latency, memory and energy claims, 700M to 70B, BitNet b1.58 against FP16
    /// of the same shapes on this machine (docs/paper.md).
    Paper(bench_paper::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::run(&a),
        Command::Chat(a) => run::chat(&a),
        Command::Logits(a) => run::logits(&a),
        Command::Info(a) => run::info(&a),
        Command::Train(a) => train::run(&a),
        Command::Plot(a) => plot::run(&a),
        Command::Perplexity(a) => perplexity::run(&a),
        Command::Eval(a) => eval::run(&a),
        Command::Quantize(a) => train::quantize(&a),
        Command::Convert(a) => convert::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::Bench {
            what: BenchWhat::Kernels(args),
        } => bench_kernels::run(&args),
        Command::Bench {
            what: BenchWhat::Model(args),
        } => bench_model::run(&args),
        Command::Bench {
            what: BenchWhat::Serve(args),
        } => bench_serve::run(&args),
        Command::Bench {
            what: BenchWhat::Batch(args),
        } => bench_batch::run(&args),
        Command::Bench {
            what: BenchWhat::Paper(args),
        } => bench_paper::run(&args),
    };
    if let Err(e) = result {
        eprintln!("tern: error: {}", error_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, each said once. The libraries' errors quote their
/// cause in their own message (`"{path}: {source}"`, so `to_string()` is complete) and also
/// return it from `source()`; a cause whose text already ends the line is not repeated.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_line;
    use anyhow::Context;

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "model not found");
        // A library error that quotes its source, as tern's thiserror enums do.
        let quoted = tern_model::ModelError::Io {
            path: "m".into(),
            source: io(),
        };
        assert_eq!(
            error_line(&anyhow::Error::new(quoted)),
            "m: model not found"
        );
        // Context over a plain cause keeps both.
        let e = Err::<(), _>(io()).context("loading m").unwrap_err();
        assert_eq!(error_line(&e), "loading m: model not found");
    }
}
