//! `tern run`, `tern chat`, `tern logits`, `tern info`: a model's text interface, through
//! the engine's front door ([`Session`]).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use tern_kernels::Layout;
use tern_model::chat::Message;
use tern_model::load::Loaded;
use tern_model::sample::SamplerConfig;
use tern_model::session::resolve_threads;
use tern_model::{GenParams, HeadKind, KvType, LoadOptions, ModelPath, Options, Session};

/// `--layout`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutArg {
    Tern2,
    Tern3,
}

impl From<LayoutArg> for Layout {
    fn from(l: LayoutArg) -> Layout {
        match l {
            LayoutArg::Tern2 => Layout::Tern2,
            LayoutArg::Tern3 => Layout::Tern3,
        }
    }
}

/// `--head`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadArg {
    F16,
    Int8,
}

impl From<HeadArg> for HeadKind {
    fn from(h: HeadArg) -> HeadKind {
        match h {
            HeadArg::F16 => HeadKind::F16,
            HeadArg::Int8 => HeadKind::Int8,
        }
    }
}

/// `--kv-type` (llama.cpp's `-ctk/-ctv` names).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvArg {
    F32,
    F16,
    #[value(name = "q8_0", alias = "q8")]
    Q8,
}

impl From<KvArg> for KvType {
    fn from(k: KvArg) -> KvType {
        match k {
            KvArg::F32 => KvType::F32,
            KvArg::F16 => KvType::F16,
            KvArg::Q8 => KvType::Q8,
        }
    }
}

/// Options every command that loads a model shares.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A Hugging Face model directory (config.json + *.safetensors [+ tokenizer.json]) or a
    /// GGUF file; none: the small BitNet b1.58 model bundled with tern.
    pub model: Option<PathBuf>,
    /// Threads (0 = all cores; more than the cores are capped, with a note).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Context length (prompt + generated tokens); 0 = the model's maximum.
    #[arg(long, short = 'c', default_value_t = 0)]
    pub ctx: usize,
    /// Ternary compute layout.
    #[arg(long, value_enum, default_value_t = LayoutArg::Tern2)]
    pub layout: LayoutArg,
    /// LM head precision: f16 (the checkpoint's, tied or not) or int8 (per-row, 4x fewer bytes).
    #[arg(long, value_enum, default_value_t = HeadArg::F16)]
    pub head: HeadArg,
    /// KV cache element type: f32 (exact), f16, or q8_0 (llama.cpp's, 34 bytes per 32 values).
    #[arg(long, value_enum, default_value_t = KvArg::F32)]
    pub kv_type: KvArg,
}

impl ModelArgs {
    fn model_path(&self) -> ModelPath {
        let p = ModelPath::from_option(self.model.as_deref());
        if p == ModelPath::Bundled {
            eprintln!(
                "tern: no model given: using the bundled {} (docs/model-card.md)",
                tern_model::bundled::NAME
            );
        }
        p
    }

    pub fn options(&self) -> Options {
        Options {
            threads: self.threads,
            ctx: self.ctx,
            layout: self.layout.into(),
            head: self.head.into(),
            kv: self.kv_type.into(),
            ..Options::default()
        }
    }

    /// The model with a KV cache of `--ctx` tokens, ready to generate.
    pub fn open(&self) -> Result<Session> {
        let s = Session::open(&self.model_path(), &self.options())?;
        for n in &s.notes {
            eprintln!("tern: {n}");
        }
        Ok(s)
    }

    /// The model alone (no KV cache), and where it was read from.
    pub fn load(&self) -> Result<(Loaded, PathBuf)> {
        let (threads, note) = resolve_threads(self.threads);
        if let Some(n) = note {
            eprintln!("tern: {n}");
        }
        let path = self.model_path().resolve()?;
        let opts = LoadOptions {
            layout: self.layout.into(),
            head: self.head.into(),
            threads,
        };
        Ok((tern_model::load::open(&path, &opts)?, path))
    }
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
    fn config(&self) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        }
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
    #[arg(long, conflicts_with = "prompt")]
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
    /// Most tokens per reply (at most half the context: the rest keeps the conversation).
    #[arg(long, short = 'n', default_value_t = 512,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
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
    let mut s = a.m.open()?;
    let loaded = s.loaded.clone();
    let prompt = match (&a.prompt, &a.prompt_ids) {
        (_, Some(ids)) => parse_ids(ids)?,
        (Some(text), None) => s
            .encode(text)
            .map_err(|e| anyhow::anyhow!("{e}: use --prompt-ids"))?,
        (None, None) => bail!("give a prompt with -p TEXT or --prompt-ids \"ID ID ...\""),
    };
    // Like llama.cpp: a prompt must fit; generation stops where the context ends.
    let cap = s.state.capacity();
    if prompt.len() >= cap {
        bail!("the prompt has {} tokens but the context holds {cap} (use --ctx to raise it, up to the model's maximum)", prompt.len());
    }
    let params = GenParams {
        max_new: a.n_predict,
        sampling: a.s.config(),
        ignore_eos: a.ignore_eos,
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut ids = Vec::new();
    let tok = loaded.tokenizer.as_ref().filter(|_| !a.print_ids);
    let mut dec = tok.map(|t| t.stream_decoder());
    if let (Some(_), Some(text), None) = (tok, &a.prompt, &a.prompt_ids) {
        write!(out, "{text}")?;
        out.flush()?;
    }
    let stops = &loaded.stop_tokens;
    let stats = s.generate(&prompt, &params, |id| {
        ids.push(id);
        if let Some(d) = dec.as_mut() {
            if !stops.contains(&id) {
                if let Some(text) = d.step(id) {
                    let _ = write!(out, "{text}");
                    let _ = out.flush();
                }
            }
        }
        true
    })?;
    if let Some(text) = dec.as_mut().and_then(|d| d.flush()) {
        write!(out, "{text}")?;
    }
    if dec.is_none() {
        let s: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        write!(out, "{}", s.join(" "))?;
    }
    writeln!(out)?;
    let end = if stats.stopped {
        " (end of sequence)".to_string()
    } else if stats.context_full {
        format!(" (stopped: the context of {cap} tokens is full; --ctx raises it)")
    } else {
        String::new()
    };
    eprintln!(
        "\nprompt: {} tokens, {:.2} tok/s | generation: {} tokens, {:.2} tok/s{end}",
        stats.prompt_tokens,
        stats.prompt_tps(),
        stats.generated,
        stats.gen_tps(),
    );
    Ok(())
}

/// Renders and tokenizes `messages`, dropping the oldest turns after the system prompt
/// (`keep` messages) until the prompt plus a reply of `reply` tokens fits in `cap`. `None`
/// when even the newest message alone does not fit; `dropped` says whether turns went.
fn fit_conversation(
    s: &Session,
    messages: &mut Vec<Message>,
    keep: usize,
    reply: usize,
    cap: usize,
    dropped: &mut bool,
) -> Result<Option<Vec<u32>>> {
    loop {
        let ids = s.encode(&s.template.render(messages, true)?)?;
        if ids.len() + reply <= cap {
            return Ok(Some(ids));
        }
        if messages.len() <= keep + 1 {
            return Ok(None);
        }
        // One exchange: the oldest user message and the reply to it.
        messages.remove(keep);
        if messages.len() > keep + 1 && messages[keep].role == "assistant" {
            messages.remove(keep);
        }
        *dropped = true;
    }
}

pub fn chat(a: &ChatArgs) -> Result<()> {
    let mut s = a.m.open()?;
    let loaded = s.loaded.clone();
    let Some(tok) = loaded.tokenizer.as_ref() else {
        bail!("the model has no tokenizer: chat needs one");
    };
    let cap = s.state.capacity();
    let reply_cap = a.n_predict.min(cap / 2).max(1);
    if reply_cap < a.n_predict {
        eprintln!("tern: replies are capped at {reply_cap} tokens, half the context of {cap}");
    }
    let params = GenParams {
        max_new: reply_cap,
        sampling: a.s.config(),
        ignore_eos: false,
    };
    let mut messages: Vec<Message> = a
        .system
        .iter()
        .map(|t| Message::system(t.clone()))
        .collect();
    let keep = messages.len();
    // Tokens currently in the KV cache, to reuse the shared prefix of the next turn.
    let mut cached: Vec<u32> = Vec::new();
    let (mut told_dropped, mut told_cut) = (false, false);
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let stdin = std::io::stdin();
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
        let mut dropped = false;
        let Some(ids) = fit_conversation(&s, &mut messages, keep, reply_cap, cap, &mut dropped)?
        else {
            messages.pop();
            eprintln!(
                "tern: that message does not fit in the context of {cap} tokens with room for a \
                 reply; try a shorter one (or --ctx)"
            );
            continue;
        };
        if dropped && !told_dropped {
            eprintln!(
                "tern: the conversation outgrew the context of {cap} tokens: dropping the oldest \
                 turns to keep it going"
            );
            told_dropped = true;
        }
        let reuse = cached
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        s.state.truncate(reuse);
        cached.truncate(reuse);
        let mut reply = Vec::new();
        let mut dec = tok.stream_decoder();
        let out = std::io::stdout();
        let mut out = out.lock();
        let stops = &loaded.stop_tokens;
        let stats = s.generate(&ids[reuse..], &params, |id| {
            if !stops.contains(&id) {
                reply.push(id);
                if let Some(t) = dec.step(id) {
                    let _ = write!(out, "{t}");
                    let _ = out.flush();
                }
            }
            true
        })?;
        if let Some(t) = dec.flush() {
            write!(out, "{t}")?;
        }
        writeln!(out)?;
        if !stats.stopped && !told_cut {
            eprintln!("tern: replies are cut at {reply_cap} tokens (-n)");
            told_cut = true;
        }
        cached = ids;
        cached.extend_from_slice(&reply[..reply.len().saturating_sub(1)]);
        messages.push(Message::assistant(tok.decode(&reply)));
    }
    Ok(())
}

pub fn logits(a: &LogitsArgs) -> Result<()> {
    let mut s = a.m.open()?;
    let ids = parse_ids(&a.prompt_ids)?;
    if ids.is_empty() {
        bail!("--prompt-ids is empty");
    }
    let v = s.loaded.model.config.vocab_size;
    let logits = s.logits_all(&ids)?;
    let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![ids.len(), v], &bytes)
            .context("building the logits tensor")?;
    let data = safetensors::serialize([("logits", view)], None).context("serializing logits")?;
    tern_io::write_atomic(&a.out, &data).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {} x {} logits to {}", ids.len(), v, a.out.display());
    Ok(())
}

fn or_none<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

pub fn info(a: &InfoArgs) -> Result<()> {
    let (loaded, path) = a.m.load()?;
    let m = &loaded.model;
    let c = &m.config;
    println!("model            {}", path.display());
    println!(
        "format           {}{}",
        loaded.info.format,
        loaded
            .info
            .arch
            .as_deref()
            .map(|a| format!(" (architecture {a})"))
            .unwrap_or_default()
    );
    println!(
        "shape            {} layers, hidden {}, ffn {}, heads {} (kv {}), head_dim {}",
        c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim
    );
    println!("vocab            {}", c.vocab_size);
    println!("context          {}", c.max_seq_len);
    println!(
        "activation       {}, sub-norms: {}",
        c.activation.name(),
        if c.sub_norms { "yes" } else { "no" }
    );
    println!("rope theta       {}", c.rope_theta);
    let ids = |v: &[u32]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        }
    };
    println!(
        "bos / eos        {} / {}",
        or_none(c.bos_token_id),
        ids(&c.eos_token_ids)
    );
    println!("stop tokens      {}", ids(&loaded.stop_tokens));
    let l = &m.layers[0];
    println!("projections      {}", l.q.type_name());
    println!(
        "embedding        {} ({} MB)",
        m.embed.type_name(),
        m.embed.byte_len() / 1_000_000
    );
    println!("lm head          {}", m.head_type());
    let tokenizer = match (&loaded.tokenizer, &loaded.tokenizer_error) {
        (Some(_), _) => format!("from {}", loaded.tokenizer_origin),
        (None, Some(e)) => format!("none ({e})"),
        (None, None) => "none".to_string(),
    };
    println!("tokenizer        {tokenizer}");
    match &loaded.chat_template {
        Some(_) => println!("chat template    from {}", loaded.chat_template_origin),
        None => println!("chat template    none (BitNet 2B4T format used)"),
    }
    let per_tok = m.bytes_per_token();
    println!(
        "decode reads     {:.1} MB of weights per token",
        per_tok as f64 / 1e6
    );
    Ok(())
}
