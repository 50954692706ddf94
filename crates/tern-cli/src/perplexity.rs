//! `tern perplexity MODEL -f FILE`: next-token perplexity of the engine on a text, the way
//! the trainer evaluates (`tern train eval`): documents become `BOS text EOS`, concatenated,
//! cut into non-overlapping windows of `ctx + 1` tokens; every window is a fresh context whose
//! `ctx` predictions are all scored. On a model exported by `tern train` the two numbers
//! agree, which checks training, export, conversion and the engine end to end; with
//! `--head int8` it measures what the quantized LM head costs.
//!
//! `--llama-compat` is llama.cpp's `llama-perplexity` method instead, so a number can sit
//! beside llama.cpp's on the same file: the whole file is one text, tokenized once (with BOS
//! when the tokenizer adds one), cut into non-overlapping windows of `ctx` tokens (default
//! 512); each window's first token is replaced by BOS (when the tokenizer adds one) and only
//! the predictions of its second half are scored (`first = ctx / 2`, the last position has no
//! target). The `±` is llama.cpp's: the standard deviation of the token losses over
//! `sqrt(count - 1)`, times the perplexity.

use crate::run::ModelArgs;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Text file (one document), directory, or .jsonl(.gz) (one document per line,
    /// --text-field).
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// JSONL field holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Windows to score (0: all).
    #[arg(long, default_value_t = 0)]
    chunks: usize,
    /// One JSON line instead of text.
    #[arg(long)]
    json: bool,
    /// llama.cpp's llama-perplexity method (windows of --ctx, default 512, second half of each
    /// scored, BOS replacing each window's first token); the file is read as one plain text.
    #[arg(long)]
    llama_compat: bool,
}

pub fn run(a: &Args) -> Result<()> {
    if a.llama_compat {
        return llama_compat(a);
    }
    let mut s = a.m.open()?;
    let loaded = s.loaded.clone();
    let Some(tok) = &loaded.tokenizer else {
        bail!("the model has no tokenizer: perplexity needs text");
    };
    let cfg = &loaded.model.config;
    let ctx = if a.m.ctx == 0 {
        cfg.max_seq_len.min(256)
    } else {
        a.m.ctx
    };
    // Every window is one forward pass of `ctx` tokens.
    s.state = s.new_state(ctx, ctx)?;
    // The trainer's reader: the same documents as `tern train eval --data`.
    let docs = tern_train::data::read_sources(&[a.file.display().to_string()], &a.text_field)?;
    let bos = tok.bos_token_id();
    let eos = cfg.eos_token_ids.first().copied();
    let mut ids = Vec::new();
    let mut bytes = 0usize;
    for d in &docs {
        ids.extend(bos);
        ids.extend(tok.encode(d, false)?);
        ids.extend(eos);
        bytes += d.len();
    }
    let n_windows = ids.len().saturating_sub(1) / ctx;
    let n_windows = if a.chunks == 0 {
        n_windows
    } else {
        n_windows.min(a.chunks)
    };
    if n_windows == 0 {
        bail!(
            "{}: {} tokens, fewer than one window of {} + 1",
            a.file.display(),
            ids.len(),
            ctx
        );
    }
    let v = cfg.vocab_size;
    let (mut nll, mut count) = (0f64, 0usize);
    let start = std::time::Instant::now();
    for w in 0..n_windows {
        let window = &ids[w * ctx..w * ctx + ctx + 1];
        s.state.reset();
        let logits = s.logits_all(&window[..ctx])?;
        for (i, row) in logits.chunks(v).enumerate() {
            nll += token_nll(row, window[i + 1]);
            count += 1;
        }
    }
    let loss = nll / count as f64;
    let bytes_per_token = bytes as f64 / ids.len() as f64;
    let bpb = loss / std::f64::consts::LN_2 / bytes_per_token;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "file": a.file.display().to_string(), "head": tern_model::HeadKind::from(a.m.head).name(), "ctx": ctx,
                "windows": n_windows, "tokens": count, "loss": loss, "ppl": loss.exp(),
                "bpb": bpb,
            })
        );
    } else {
        println!(
            "{}: {n_windows} windows of {ctx} tokens ({count} scored, head {}): loss {loss:.4}  ppl {:.3}  bpb {bpb:.4}  ({:.1} s)",
            a.file.display(),
            tern_model::HeadKind::from(a.m.head).name(),
            loss.exp(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Log-sum-exp of a logits row minus the target's logit: the token's loss (f64).
fn token_nll(row: &[f32], target: u32) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    lse - row[target as usize] as f64
}

/// llama.cpp's `perplexity()` (examples/perplexity/perplexity.cpp) on one text file.
fn llama_compat(a: &Args) -> Result<()> {
    let ctx = if a.m.ctx == 0 { 512 } else { a.m.ctx };
    let mut m = a.m.clone();
    m.ctx = ctx;
    let mut s = m.open()?;
    s.state = s.new_state(ctx, ctx)?;
    let loaded = s.loaded.clone();
    let Some(tok) = &loaded.tokenizer else {
        bail!("the model has no tokenizer: perplexity needs text");
    };
    let text = std::fs::read_to_string(&a.file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let bos = tok.bos_token_id();
    let mut ids = tok.encode(&text, bos.is_some())?;
    if ids.len() < 2 * ctx {
        bail!(
            "{}: {} tokens; llama-perplexity's method needs at least {} (2 x the context of {ctx})",
            a.file.display(),
            ids.len(),
            2 * ctx
        );
    }
    let n_max = ids.len() / ctx;
    let n_chunk = if a.chunks == 0 {
        n_max
    } else {
        a.chunks.min(n_max)
    };
    let first = ctx / 2;
    let v = loaded.model.config.vocab_size;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let start = std::time::Instant::now();
    for i in 0..n_chunk {
        let window = &mut ids[i * ctx..(i + 1) * ctx];
        let orig = window[0];
        if let Some(b) = bos {
            window[0] = b;
        }
        s.state.reset();
        let logits = s.logits_all(window)?;
        window[0] = orig;
        // Position j predicts token j + 1; llama.cpp scores j in first..ctx - 1.
        for j in first..ctx - 1 {
            let l = token_nll(&logits[j * v..(j + 1) * v], ids[i * ctx + j + 1]);
            nll += l;
            nll2 += l * l;
            count += 1;
        }
    }
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let err = if var > 0.0 {
        (var / (count as f64 - 1.0)).sqrt() * ppl
    } else {
        0.0
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "file": a.file.display().to_string(), "method": "llama-perplexity",
                "ctx": ctx, "chunks": n_chunk, "tokens": count, "ppl": ppl, "ppl_err": err,
            })
        );
    } else {
        println!(
            "{}: llama-perplexity method, {n_chunk} chunks of {ctx} ({count} scored): PPL = {ppl:.4} +/- {err:.5}  ({:.1} s)",
            a.file.display(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
