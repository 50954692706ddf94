//! Text in, token shards out, batches back: corpus reading, byte-level BPE training, shard
//! files (tokenized once, memory-mapped after) and deterministic batch sampling.

use crate::error::{Result, TrainError};
use memmap2::Mmap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use tern_kernels::rng::Rng;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// Special tokens of trained tokenizers, at ids 0, 1, 2 (LLaMA-3 spellings, so the engine's
/// BOS detection and the 2B4T chat template apply unchanged).
pub const BOS: &str = "<|begin_of_text|>";
pub const EOS: &str = "<|end_of_text|>";
pub const EOT: &str = "<|eot_id|>";

/// The bundled corpus: State of the Union addresses, gzipped JSONL (see data/README.md).
const SOTU_GZ: &[u8] = include_bytes!("../../../data/sotu.jsonl.gz");

/// Training and validation documents.
pub struct Corpus {
    pub train: Vec<String>,
    pub valid: Vec<String>,
    /// Where the text came from, for logs and model cards.
    pub description: String,
}

/// The bundled SOTU corpus: speeches up to 2000 train, 2001-2021 validate.
pub fn bundled_sotu() -> Result<Corpus> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(SOTU_GZ)
        .read_to_string(&mut text)
        .map_err(|e| TrainError::Data(format!("bundled sotu.jsonl.gz: {e}")))?;
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| TrainError::Data(format!("bundled sotu.jsonl.gz line {}: {e}", i + 1)))?;
        let year = v["year"].as_u64().unwrap_or(0);
        let body = v["text"].as_str().unwrap_or_default().to_string();
        if year <= 2000 {
            train.push(body);
        } else {
            valid.push(body);
        }
    }
    Ok(Corpus {
        train,
        valid,
        description:
            "State of the Union addresses (bundled; train 1790-2000, validation 2001-2021)".into(),
    })
}

/// Documents from files, directories (all files below, sorted, hidden ones skipped) and
/// JSONL files (`.jsonl`, `.jsonl.gz`: one object per line, text in `text_field`).
pub fn read_sources(paths: &[String], text_field: &str) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(Path::new(p), &mut files)?;
    }
    let mut docs = Vec::new();
    for f in files {
        read_file_docs(&f, text_field, &mut docs)?;
    }
    Ok(docs)
}

fn collect_files(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(p).map_err(|e| TrainError::io(p, e))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| TrainError::io(p, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|e| {
                !e.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        entries.sort();
        for e in entries {
            collect_files(&e, out)?;
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

fn read_file_docs(path: &Path, text_field: &str, docs: &mut Vec<String>) -> Result<()> {
    let name = path.to_string_lossy();
    let file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let reader: Box<dyn Read> = if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let jsonl = name.ends_with(".jsonl") || name.ends_with(".jsonl.gz");
    let mut reader = std::io::BufReader::new(reader);
    if jsonl {
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| TrainError::io(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| TrainError::Data(format!("{name} line {}: {e}", i + 1)))?;
            match v.get(text_field).and_then(|t| t.as_str()) {
                Some(t) => docs.push(t.to_string()),
                None => {
                    return Err(TrainError::Data(format!(
                        "{name} line {}: no string field {text_field:?} (set --text-field)",
                        i + 1
                    )))
                }
            }
        }
    } else {
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| TrainError::io(path, e))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| TrainError::Data(format!("{name}: not UTF-8 text ({e})")))?;
        docs.push(text);
    }
    Ok(())
}

/// Trains a GPT-2-style byte-level BPE (`vocab_size` entries including the 3 specials) whose
/// post-processor adds BOS, as LLaMA-3's does.
pub fn train_tokenizer(docs: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let specials: Vec<AddedToken> = [BOS, EOS, EOT]
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.train(&mut trainer, docs.iter())
        .map_err(|e| TrainError::Tokenizer(format!("BPE training failed: {e}")))?;
    let bos_id = tok
        .token_to_id(BOS)
        .ok_or_else(|| TrainError::Tokenizer("trained vocabulary lacks BOS".into()))?;
    let post = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A"))
        .and_then(|b| b.try_pair(format!("{BOS} $A {BOS} $B")))
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?
        .special_tokens(vec![(BOS.to_string(), bos_id)])
        .build()
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    tok.with_post_processor(Some(post));
    Ok(tok)
}

/// `[BOS] doc [EOS]` for every document, concatenated.
pub fn encode_docs(tok: &Tokenizer, docs: &[String]) -> Result<Vec<u32>> {
    let bos = tok.token_to_id(BOS);
    let eos = tok.token_to_id(EOS);
    let mut out = Vec::new();
    for d in docs {
        let enc = tok
            .encode(d.as_str(), false)
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
        out.extend(bos);
        out.extend_from_slice(enc.get_ids());
        out.extend(eos);
    }
    Ok(out)
}

/// Tokenizes `docs` ([`encode_docs`]) into a shard at `path` that records the text's bytes.
pub fn write_docs_shard(tok: &Tokenizer, docs: &[String], path: &Path) -> Result<()> {
    let ids = encode_docs(tok, docs)?;
    let bytes: u64 = docs.iter().map(|d| d.len() as u64).sum();
    write_shard(path, &ids, tok.get_vocab_size(true), bytes)
}

const MAGIC: &[u8; 8] = b"TERNTOK1";
const HEADER: usize = 32;

/// Writes a token shard atomically: 32-byte header (magic, bytes per token, vocab size,
/// token count, source text bytes), then the tokens little-endian, u16 when they fit.
pub fn write_shard(path: &Path, tokens: &[u32], vocab: usize, text_bytes: u64) -> Result<()> {
    let wide = vocab > u16::MAX as usize + 1;
    let mut buf = Vec::with_capacity(HEADER + tokens.len() * 4);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&(if wide { 4u32 } else { 2u32 }).to_le_bytes());
    buf.extend_from_slice(&(vocab as u32).to_le_bytes());
    buf.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
    buf.extend_from_slice(&text_bytes.to_le_bytes());
    for &t in tokens {
        if wide {
            buf.extend_from_slice(&t.to_le_bytes());
        } else {
            buf.extend_from_slice(&(t as u16).to_le_bytes());
        }
    }
    write_file(path, &buf)
}

/// Writes one of training's files (a shard, checkpoint, config or exported file) with
/// [`tern_io::write_atomic`], creating its directory first: run and export directories come
/// into being as training writes into them.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = tern_io::parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    tern_io::write_atomic(path, bytes).map_err(|e| TrainError::io(path, e))
}

/// A memory-mapped token shard.
pub struct Shard {
    map: Mmap,
    wide: bool,
    pub len: usize,
    pub vocab: usize,
    pub text_bytes: u64,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Shard> {
        let file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
        // SAFETY: the shard is written once, atomically, and only read afterwards; nothing
        // truncates it while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| TrainError::io(path, e))?;
        let bad = |what: String| TrainError::Data(format!("{}: {what}", path.display()));
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(bad("not a tern token shard (bad magic)".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(map[o..o + 8].try_into().unwrap());
        let bpt = u32_at(8);
        let vocab = u32_at(12) as usize;
        let len = u64_at(16);
        let text_bytes = u64_at(24);
        if bpt != 2 && bpt != 4 {
            return Err(bad(format!("{bpt} bytes per token (expected 2 or 4)")));
        }
        let want = len
            .checked_mul(bpt as u64)
            .and_then(|b| b.checked_add(HEADER as u64));
        if want != Some(map.len() as u64) {
            return Err(bad(format!(
                "{} bytes for {len} tokens of {bpt} bytes (truncated?)",
                map.len()
            )));
        }
        let shard = Shard {
            map,
            wide: bpt == 4,
            len: len as usize,
            vocab,
            text_bytes,
        };
        if let Some(i) = (0..shard.len).find(|&i| shard.get(i) as usize >= vocab) {
            return Err(bad(format!(
                "token {} at {i} is outside the vocabulary ({vocab})",
                shard.get(i)
            )));
        }
        Ok(shard)
    }

    pub fn get(&self, i: usize) -> u32 {
        let d = &self.map[HEADER..];
        if self.wide {
            u32::from_le_bytes(d[i * 4..i * 4 + 4].try_into().unwrap())
        } else {
            u16::from_le_bytes(d[i * 2..i * 2 + 2].try_into().unwrap()) as u32
        }
    }

    /// Tokens `start..start + n`.
    pub fn slice(&self, start: usize, n: usize) -> Vec<u32> {
        (start..start + n).map(|i| self.get(i)).collect()
    }
}

/// The training batch of step `step`: `b` windows of `t + 1` tokens at offsets drawn from a
/// generator seeded by `(seed, step)` alone, so a resumed run sees exactly the batches an
/// uninterrupted one would. Returns `(inputs, targets)`, each `b * t`.
pub fn train_batch(
    shard: &Shard,
    seed: u64,
    step: u64,
    b: usize,
    t: usize,
) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_add(1));
    let span = (shard.len - t - 1) as u64 + 1;
    let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
    for _ in 0..b {
        let start = rng.below(span) as usize;
        let w = shard.slice(start, t + 1);
        x.extend_from_slice(&w[..t]);
        y.extend_from_slice(&w[1..]);
    }
    (x, y)
}

/// Start offsets of the validation windows: non-overlapping, from the beginning, at most
/// `max` of them (0: all).
pub fn valid_windows(shard: &Shard, t: usize, max: usize) -> Vec<usize> {
    let n = shard.len.saturating_sub(1) / t;
    let n = if max == 0 { n } else { n.min(max) };
    (0..n).map(|i| i * t).collect()
}
