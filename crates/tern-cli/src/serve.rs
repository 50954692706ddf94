//! `tern serve`: the OpenAI-compatible server of `tern-serve` (docs/serving.md).

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
    /// Sequences each model generates at once, interleaved token by token (each holds a KV
    /// cache of --ctx tokens).
    #[arg(long, default_value_t = 4,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub parallel: usize,
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
        api_key: a.api_key.clone(),
        body_limit: a.body_limit,
        shutdown_grace: std::time::Duration::from_secs(a.grace),
    })
}
