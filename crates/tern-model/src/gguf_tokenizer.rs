//! A [`Tokenizer`] built from a GGUF file's `tokenizer.ggml.*` metadata, so GGUF models can
//! take text prompts without a separate `tokenizer.json`.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE, which LLaMA-3 and BitNet b1.58
//! 2B4T use). This is llama.cpp's HF -> GGUF conversion in reverse: the vocabulary
//! (`tokens`, already in byte-level form), `merges` (`"a b"` strings), control (type 3) and
//! user-defined (type 4) tokens as added tokens, and the pre-tokenizer named by
//! `tokenizer.ggml.pre` (a split regex followed by a byte-level mapping without its own regex).
//! Other models (SentencePiece `"llama"`, ...) and other pre-tokenizers give `None`.

use tern_gguf::{GgufFile, GgufValue};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::ModelError;
use crate::tokenizer::Tokenizer;

/// LLaMA-3's split regex (`tokenizer.ggml.pre` = `llama-bpe`), as in its `tokenizer.json`.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's split regex (`tokenizer.ggml.pre` = `default` / `gpt2`).
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Builds the tokenizer described by `file`'s metadata. `Ok(None)` when the file has no
/// tokenizer or one not supported here (not `gpt2`, or a `tokenizer.ggml.pre` other than
/// `llama-bpe` / `llama3` / `llama-v3` / `default` / `gpt2` / `gpt-2`); errors for a supported
/// kind whose metadata is inconsistent (missing tokens, bad merges, token types or ids).
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Option<Tokenizer>, ModelError> {
    let err = |what: String| ModelError::Config {
        file: file.path().display().to_string(),
        what,
    };
    match file.get("tokenizer.ggml.model").and_then(GgufValue::as_str) {
        Some("gpt2") => {}
        _ => return Ok(None),
    }
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(GgufValue::as_array)
        .and_then(|a| a.as_strings())
        .ok_or_else(|| err("tokenizer.ggml.tokens is missing or not a string array".into()))?;
    let merges: Vec<(String, String)> = match file.get("tokenizer.ggml.merges") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| a.as_strings())
            .ok_or_else(|| err("tokenizer.ggml.merges is not a string array".into()))?
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| err(format!("tokenizer.ggml.merges: bad merge {m:?}")))
            })
            .collect::<Result<_, _>>()?,
    };
    let types: Option<Vec<i64>> = match file.get("tokenizer.ggml.token_type") {
        None => None,
        Some(v) => Some(
            v.as_array()
                .and_then(|a| a.to_i64s())
                .ok_or_else(|| err("tokenizer.ggml.token_type is not an integer array".into()))?,
        ),
    };
    if let Some(t) = &types {
        if t.len() != tokens.len() {
            return Err(err(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                t.len(),
                tokens.len()
            )));
        }
    }
    let pre = file.get("tokenizer.ggml.pre").and_then(GgufValue::as_str);
    // Absent: BitNet b1.58 files use LLaMA-3's vocabulary (bitnet-spec.md 5.3.3).
    let (pattern, ignore_merges) = match pre {
        None | Some("llama-bpe" | "llama3" | "llama-v3") => (LLAMA3_PATTERN, true),
        Some("default" | "gpt2" | "gpt-2") => (GPT2_PATTERN, false),
        // Another split regex (qwen2, deepseek, ...): guessing would silently mis-tokenize.
        Some(_) => return Ok(None),
    };

    // Duplicate strings keep their first id, as a tokenizer.json vocabulary cannot hold both.
    let mut vocab = Vocab::default();
    for (id, tok) in tokens.iter().enumerate() {
        let id = u32::try_from(id).map_err(|_| err("too many tokens".into()))?;
        vocab.entry(tok.clone()).or_insert(id);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| err(format!("cannot build the BPE model: {e}")))?;

    let split = Split::new(
        SplitPattern::Regex(pattern.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| err(format!("bad pre-tokenizer regex: {e}")))?;
    let pre_tokenizer = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]);

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer));
    inner.with_decoder(Some(ByteLevelDecoder::default()));

    if let Some(types) = &types {
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (tok, &ty) in tokens.iter().zip(types) {
            match ty {
                TOKEN_TYPE_CONTROL => special.push(AddedToken::from(tok.clone(), true)),
                TOKEN_TYPE_USER_DEFINED => {
                    user.push(AddedToken::from(tok.clone(), false).normalized(false))
                }
                _ => {}
            }
        }
        inner.add_special_tokens(&special);
        inner.add_tokens(&user);
    }

    let mut tok = Tokenizer::from_tokenizer(inner);
    let id = |key: &str| -> Result<Option<u32>, ModelError> {
        match file.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .filter(|&x| (x as usize) < tokens.len())
                .map(Some)
                .ok_or_else(|| err(format!("{key} is not a token id"))),
        }
    };
    let add_bos = file
        .get("tokenizer.ggml.add_bos_token")
        .and_then(GgufValue::as_bool)
        .unwrap_or(true);
    if let Some(bos) = id("tokenizer.ggml.bos_token_id")? {
        tok.set_bos_token_id(Some(bos));
    }
    if !add_bos {
        tok.set_bos_token_id(None);
    }
    Ok(Some(tok))
}
