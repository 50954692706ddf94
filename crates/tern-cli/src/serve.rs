//! `tern serve`: the OpenAI-compatible server of `tern-serve` (docs/serving.md).

use crate::run::{HeadArg, KvArg};
use anyhow::Result;
use tern_serve::{Config, ModelSpec};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model to serve, as NAME=PATH (HF directory or GGUF file); repeatable. None: the
    /// bundled model, served as "tern-sotu-b158".
    #[arg(long = "model", short = 'm', value_parser = ModelSpec::parse)]
    pub models: Vec<ModelSpec>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port; 0 = any free one (printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Threads of each model's engine (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Tokens per sequence, prompt + completion (0 = the model's maximum).
    #[arg(long, short = 'c', default_value_t = 0)]
    pub ctx: usize,
    /// Requests that may wait per model; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Most sequences each model generates at once, as one batched step per token (the KV
    /// budget may admit fewer).
    #[arg(long, short = 'p', default_value_t = 16,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub parallel: usize,
    /// LM head precision: f16 (the checkpoint's) or int8 (per-row; 4x fewer bytes and, in a
    /// batched step, int8 dot products).
    #[arg(long, value_enum, default_value_t = HeadArg::F16)]
    pub head: HeadArg,
    /// KV cache element type (llama.cpp's -ctk/-ctv names).
    #[arg(long, value_enum, default_value_t = KvArg::F16)]
    pub kv_type: KvArg,
    /// KV cache memory of each model's active sequences, e.g. 2GiB or 512MiB; each sequence
    /// reserves its prompt + max_tokens. Default: --parallel sequences of the full --ctx.
    #[arg(long, value_parser = parse_bytes)]
    pub kv_budget: Option<usize>,
    /// Token rows per batched step: one per decoding sequence, the rest chunks of waiting
    /// prompts (vLLM's max_num_batched_tokens). Lower: steadier inter-token latency while
    /// prompts arrive; higher: faster prefill.
    #[arg(long, default_value_t = 64,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub step_tokens: usize,
    /// Require "Authorization: Bearer KEY" on /v1/* (/health and /metrics stay open).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Largest request body, in bytes (larger: 413).
    #[arg(long, default_value_t = 1 << 20)]
    pub body_limit: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/Ctrl-C.
    #[arg(long, default_value_t = 10)]
    pub grace: u64,
}

pub fn run(a: &Args) -> Result<()> {
    if a.api_key.as_deref() == Some("") {
        anyhow::bail!("--api-key is empty: give a key, or leave the flag out to serve without one");
    }
    if a.models.is_empty() {
        eprintln!(
            "tern: no model given: serving the bundled {} (docs/model-card.md)",
            tern_model::bundled::NAME
        );
    }
    tern_serve::serve(&Config {
        models: a.models.clone(),
        host: a.host.clone(),
        port: a.port,
        threads: a.threads,
        ctx: a.ctx,
        max_queue: a.max_queue,
        parallel: a.parallel,
        kv_type: a.kv_type.into(),
        head: a.head.into(),
        kv_budget: a.kv_budget.unwrap_or(0),
        step_tokens: a.step_tokens,
        api_key: a.api_key.clone(),
        body_limit: a.body_limit,
        shutdown_grace: std::time::Duration::from_secs(a.grace),
    })
}

/// A size in bytes: a number with an optional unit, `K`/`M`/`G`/`T` or `KiB`.. (powers of
/// 1024, as llama.cpp and most users mean them for memory) or `KB`.. (powers of 1000).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}': expected a size such as 2GiB, 512MiB or 1000000"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        u => {
            return Err(format!(
                "'{s}': unknown unit '{u}' (use KiB, MiB, GiB, or KB, MB, GB)"
            ))
        }
    };
    let v = n * mult;
    if !(v >= 1.0 && v < usize::MAX as f64) {
        return Err(format!("'{s}': out of range"));
    }
    Ok(v as usize)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("1.5 MiB"), Ok(3 << 19));
        assert_eq!(parse_bytes("3GB"), Ok(3_000_000_000));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
    }
}
