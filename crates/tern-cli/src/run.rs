//! `tern run`, `tern chat`, `tern logits`, `tern info`: a model's text interface.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use tern_kernels::{Layout, ThreadPool};
use tern_model::chat::Message;
use tern_model::forward::Logits;
use tern_model::generate::{Generator, StopRule};
use tern_model::hf::{HeadKind, LoadOptions};
use tern_model::load::{open, Loaded};
use tern_model::sample::{Sampler, SamplerConfig};
use tern_model::State;

/// Options every command that loads a model shares.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A Hugging Face model directory (config.json + *.safetensors [+ tokenizer.json]) or a
    /// GGUF file; none: the small BitNet b1.58 model bundled with tern.
    pub model: Option<PathBuf>,
    /// Threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Context length (prompt + generated tokens); 0 = the model's maximum.
    #[arg(long, short = 'c', default_value_t = 0)]
    pub ctx: usize,
    /// Ternary compute layout: tern2 or tern3.
    #[arg(long, default_value = "tern2")]
    pub layout: String,
    /// LM head precision: f16 (the checkpoint's, tied or not) or int8 (per-row, 4x fewer bytes).
    #[arg(long, default_value = "f16")]
    pub head: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 = greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SamplingArgs {
    fn sampler(&self) -> Result<Sampler> {
        let c = SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        };
        c.validate().map_err(|e| anyhow::anyhow!("sampling: {e}"))?;
        Ok(Sampler::new(c))
    }
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Prompt text.
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// Prompt as token ids ("1 15043 29892"), used as given (no BOS added).
    #[arg(long)]
    pub prompt_ids: Option<String>,
    /// Tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128)]
    pub n_predict: usize,
    /// Keep generating through end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print the generated token ids (space separated) on stdout instead of text.
    #[arg(long)]
    pub print_ids: bool,
    #[command(flatten)]
    pub s: SamplingArgs,
}

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per reply.
    #[arg(long, short = 'n', default_value_t = 512)]
    pub n_predict: usize,
    #[command(flatten)]
    pub s: SamplingArgs,
}

#[derive(clap::Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Token ids ("1 15043 29892").
    #[arg(long)]
    pub prompt_ids: String,
    /// Output safetensors file; logits `[T, V]` f32 under key `logits`.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub m: ModelArgs,
}

struct Session {
    loaded: Loaded,
    pool: ThreadPool,
    state: State,
}

pub(crate) fn threads(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        n
    }
}

/// The model argument, or the bundled model when there is none.
fn model_path(m: &ModelArgs) -> Result<PathBuf> {
    match &m.model {
        Some(p) => Ok(p.clone()),
        None => {
            let p = crate::bundled::path()?;
            eprintln!(
                "tern: no model given: using the bundled {} (docs/model-card.md)",
                crate::bundled::NAME
            );
            Ok(p)
        }
    }
}

pub(crate) fn load(m: &ModelArgs) -> Result<Loaded> {
    let layout = Layout::from_name(&m.layout)
        .with_context(|| format!("--layout {:?}: expected tern2 or tern3", m.layout))?;
    let head = match m.head.as_str() {
        "f16" => HeadKind::F16,
        "int8" => HeadKind::Int8,
        other => bail!("--head {other:?}: expected f16 or int8"),
    };
    let path = model_path(m)?;
    Ok(open(&path, &LoadOptions { layout, head })?)
}

fn session(m: &ModelArgs) -> Result<Session> {
    let loaded = load(m)?;
    let t = threads(m.threads);
    let max = loaded.model.config.max_seq_len;
    let ctx = if m.ctx == 0 { max } else { m.ctx };
    let state = State::new(&loaded.model.config, ctx, 512, t)?;
    Ok(Session {
        loaded,
        pool: ThreadPool::new(t),
        state,
    })
}

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.parse::<u32>()
                .with_context(|| format!("--prompt-ids: {w:?} is not a token id"))
        })
        .collect()
}

pub fn run(a: &RunArgs) -> Result<()> {
    let mut s = session(&a.m)?;
    let prompt = match (&a.prompt, &a.prompt_ids) {
        (_, Some(ids)) => parse_ids(ids)?,
        (Some(text), None) => match &s.loaded.tokenizer {
            Some(t) => t.encode(text, true)?,
            None => bail!(
                "the model has no tokenizer ({}): use --prompt-ids",
                s.loaded.tokenizer_error.as_deref().unwrap_or(
                    "a directory without tokenizer.json, or a GGUF file without tokenizer.ggml.*"
                )
            ),
        },
        (None, None) => bail!("give a prompt with -p TEXT or --prompt-ids \"ID ID ...\""),
    };
    let mut sampler = a.s.sampler()?;
    let stop = StopRule {
        stop_tokens: s.loaded.stop_tokens.clone(),
        ignore_stop: a.ignore_eos,
    };
    // Like llama.cpp: a prompt must fit; generation stops where the context ends.
    let cap = s.state.capacity();
    if prompt.len() >= cap {
        bail!("the prompt has {} tokens but the context holds {cap} (use --ctx to raise it, up to the model's maximum)", prompt.len());
    }
    let n_predict = a.n_predict.min(cap - prompt.len());
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut ids = Vec::new();
    let tok = s.loaded.tokenizer.as_ref().filter(|_| !a.print_ids);
    let mut dec = tok.map(|t| t.stream_decoder());
    if let (Some(_), Some(text), None) = (tok, &a.prompt, &a.prompt_ids) {
        write!(out, "{text}")?;
        out.flush()?;
    }
    let stats = Generator::new().generate(
        &s.loaded.model,
        &mut s.state,
        &s.pool,
        &prompt,
        n_predict,
        &mut sampler,
        &stop,
        |id| {
            ids.push(id);
            if let Some(d) = dec.as_mut() {
                if !stop.stop_tokens.contains(&id) {
                    if let Some(text) = d.step(id) {
                        let _ = write!(out, "{text}");
                        let _ = out.flush();
                    }
                }
            }
            true
        },
    )?;
    if let Some(text) = dec.as_mut().and_then(|d| d.flush()) {
        write!(out, "{text}")?;
    }
    if dec.is_none() {
        let s: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        write!(out, "{}", s.join(" "))?;
    }
    writeln!(out)?;
    eprintln!(
        "\nprompt: {} tokens, {:.2} tok/s | generation: {} tokens, {:.2} tok/s{}",
        stats.prompt_tokens,
        stats.prompt_tps(),
        stats.generated,
        stats.gen_tps(),
        if stats.stopped {
            " (end of sequence)"
        } else {
            ""
        }
    );
    Ok(())
}

pub fn chat(a: &ChatArgs) -> Result<()> {
    let mut s = session(&a.m)?;
    let template = s.loaded.take_template();
    let Some(tok) = s.loaded.tokenizer.take() else {
        bail!("the model has no tokenizer.json: chat needs one");
    };
    let mut sampler = a.s.sampler()?;
    let stop = StopRule {
        stop_tokens: s.loaded.stop_tokens.clone(),
        ignore_stop: false,
    };
    let mut messages: Vec<Message> = a
        .system
        .iter()
        .map(|t| Message::system(t.clone()))
        .collect();
    // Tokens currently in the KV cache, to reuse the shared prefix of the next turn.
    let mut cached: Vec<u32> = Vec::new();
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let stdin = std::io::stdin();
    let mut gen = Generator::new();
    loop {
        if interactive {
            eprint!("> ");
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        messages.push(Message::user(line));
        let text = template.render(&messages, true)?;
        let ids = tok.encode(&text, true)?;
        let keep = cached
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        s.state.truncate(keep);
        cached.truncate(keep);
        let budget = a
            .n_predict
            .min(s.state.capacity().saturating_sub(ids.len()));
        if budget == 0 {
            bail!(
                "the conversation ({} tokens) fills the context of {} tokens",
                ids.len(),
                s.state.capacity()
            );
        }
        let mut reply = Vec::new();
        let mut dec = tok.stream_decoder();
        let out = std::io::stdout();
        let mut out = out.lock();
        gen.generate(
            &s.loaded.model,
            &mut s.state,
            &s.pool,
            &ids[keep..],
            budget,
            &mut sampler,
            &stop,
            |id| {
                if !stop.stop_tokens.contains(&id) {
                    reply.push(id);
                    if let Some(t) = dec.step(id) {
                        let _ = write!(out, "{t}");
                        let _ = out.flush();
                    }
                }
                true
            },
        )?;
        if let Some(t) = dec.flush() {
            write!(out, "{t}")?;
        }
        writeln!(out)?;
        cached = ids;
        cached.extend_from_slice(&reply[..reply.len().saturating_sub(1)]);
        messages.push(Message::assistant(tok.decode(&reply)));
    }
    Ok(())
}

pub fn logits(a: &LogitsArgs) -> Result<()> {
    let mut s = session(&a.m)?;
    let ids = parse_ids(&a.prompt_ids)?;
    if ids.is_empty() {
        bail!("--prompt-ids is empty");
    }
    let v = s.loaded.model.config.vocab_size;
    let logits = s
        .loaded
        .model
        .forward(&ids, &mut s.state, Logits::All, &s.pool)?;
    let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![ids.len(), v], &bytes)
            .context("building the logits tensor")?;
    let data = safetensors::serialize([("logits", view)], None).context("serializing logits")?;
    tern_io::write_atomic(&a.out, &data).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {} x {} logits to {}", ids.len(), v, a.out.display());
    Ok(())
}

pub fn info(a: &InfoArgs) -> Result<()> {
    let loaded = load(&a.m)?;
    let m = &loaded.model;
    let c = &m.config;
    let path = model_path(&a.m)?;
    println!("model            {}", path.display());
    println!(
        "shape            {} layers, hidden {}, ffn {}, heads {} (kv {}), head_dim {}",
        c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim
    );
    println!("vocab            {}", c.vocab_size);
    println!("context          {}", c.max_seq_len);
    println!(
        "activation       {:?}, sub-norms: {}",
        c.activation, c.sub_norms
    );
    println!("rope theta       {}", c.rope_theta);
    println!(
        "bos / eos        {:?} / {:?}",
        c.bos_token_id, c.eos_token_ids
    );
    println!("stop tokens      {:?}", loaded.stop_tokens);
    let l = &m.layers[0];
    println!("projections      {}", l.q.type_name());
    println!(
        "embedding        {} ({} MB)",
        m.embed.type_name(),
        m.embed.byte_len() / 1_000_000
    );
    println!("lm head          {}", m.head_type());
    let gguf = path.is_file();
    let tokenizer = match (&loaded.tokenizer, &loaded.tokenizer_error) {
        (Some(_), _) if gguf => "from tokenizer.ggml.* (GGUF metadata)".to_string(),
        (Some(_), _) => "tokenizer.json".to_string(),
        (None, Some(e)) => format!("none ({e})"),
        (None, None) => "none".to_string(),
    };
    println!("tokenizer        {tokenizer}");
    println!(
        "chat template    {}",
        match (&loaded.chat_template, gguf) {
            (Some(_), true) => "from tokenizer.chat_template (GGUF metadata)",
            (Some(_), false) => "from tokenizer_config.json",
            (None, _) => "none (BitNet 2B4T format used)",
        }
    );
    let per_tok = m.bytes_per_token();
    println!(
        "decode reads     {:.1} MB of weights per token",
        per_tok as f64 / 1e6
    );
    Ok(())
}
