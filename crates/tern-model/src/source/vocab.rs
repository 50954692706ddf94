//! Reading a tokenizer as a GGUF vocabulary (`tokenizer.ggml.*` terms) from `tokenizer.json`
//! (+ `tokenizer_config.json`) or from GGUF metadata, for conversion (the writers are
//! `tern-convert`'s), for byte-level BPE (`tokenizer.ggml.model = "gpt2"`), as
//! llama.cpp's `convert_hf_to_gguf.py` writes it:
//!
//! - `tokens`: the vocabulary by id (byte-level strings as in `tokenizer.json`); ids the
//!   tokenizer does not define become `[PAD{id}]` with type 5 (unused);
//! - `token_type`: 3 (control) for special added tokens, 4 (user-defined) for other added
//!   tokens, 1 otherwise;
//! - `merges`: `"a b"` strings;
//! - `pre`: recognised from the pre-tokenizer: LLaMA-3's split regex + ByteLevel ->
//!   `llama-bpe`; GPT-2's ByteLevel (its built-in regex, or the same regex as a Split) ->
//!   `gpt-2`. Anything else is an error: a wrong `pre` silently mis-tokenizes in llama.cpp.

use super::{Vocab, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::gguf::keys;
use crate::gguf_tokenizer::{GPT2_PATTERN, LLAMA3_PATTERN};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use tern_gguf::{GgufArray, GgufFile, GgufValue};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: path.display().to_string(),
        what: format!("invalid JSON: {e}"),
    })
}

/// The `tokenizer.ggml.pre` name of a `tokenizer.json` pre-tokenizer, or why it is not
/// supported.
fn recognise_pre(pre: &Value) -> Result<&'static str, String> {
    let ty = pre.get("type").and_then(Value::as_str).unwrap_or("");
    let byte_level = |v: &Value| v.get("type").and_then(Value::as_str) == Some("ByteLevel");
    let uses_regex = |v: &Value| v.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
    match ty {
        "ByteLevel" if uses_regex(pre) => return Ok("gpt-2"),
        "Sequence" => {
            let items = pre
                .get("pretokenizers")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let [split, bl] = items {
                let pattern = split
                    .get("pattern")
                    .and_then(|p| p.get("Regex"))
                    .and_then(Value::as_str);
                let is_split = split.get("type").and_then(Value::as_str) == Some("Split");
                if is_split && byte_level(bl) && !uses_regex(bl) {
                    match pattern {
                        Some(p) if p == LLAMA3_PATTERN => return Ok("llama-bpe"),
                        Some(p) if p == GPT2_PATTERN => return Ok("gpt-2"),
                        _ => {}
                    }
                }
            }
        }
        _ => {}
    }
    Err(format!(
        "unsupported pre-tokenizer {}: supported are GPT-2's ByteLevel (with its regex) and \
         LLaMA-3's Split regex followed by ByteLevel",
        serde_json::to_string(pre).unwrap_or_default()
    ))
}

/// A token string from a `tokenizer_config.json` field that is a string or `{"content": ..}`.
fn token_field(tc: &Value, field: &str) -> Option<String> {
    let v = tc.get(field)?;
    v.as_str()
        .or_else(|| v.get("content").and_then(Value::as_str))
        .map(str::to_string)
}

/// The chat template of `tokenizer_config.json`: a string, or a list of named templates (the
/// one named `default`).
fn chat_template(tc: &Value) -> Option<String> {
    match tc.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

/// Reads `dir/tokenizer.json` (and `tokenizer_config.json`) into a GGUF vocabulary of
/// `config.vocab_size` entries. `Ok(None)` when there is no `tokenizer.json`. Caveats go to
/// `notes`.
pub fn from_hf_dir(
    dir: &Path,
    config: &ModelConfig,
    notes: &mut Vec<String>,
) -> Result<Option<Vocab>, ModelError> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let file = path.display().to_string();
    let err = |what: String| ModelError::Config {
        file: file.clone(),
        what,
    };
    let tj = read_json(&path)?;
    let tc_path = dir.join(TOKENIZER_CONFIG_FILE);
    let tc = if tc_path.is_file() {
        read_json(&tc_path)?
    } else {
        Value::Null
    };

    let model = tj
        .get("model")
        .ok_or_else(|| err("field model: missing".into()))?;
    let model_type = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
    if model_type != "BPE" {
        return Err(err(format!(
            "model type {model_type}: only byte-level BPE tokenizers can be converted \
             (tokenizer.ggml.model = gpt2)"
        )));
    }
    if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
        return Err(err(
            "a BPE model with byte_fallback is SentencePiece-style, which is not supported \
             (only byte-level BPE, tokenizer.ggml.model = gpt2)"
                .into(),
        ));
    }
    if !tj.get("normalizer").is_none_or(Value::is_null) {
        return Err(err(
            "field normalizer: byte-level BPE tokenizers have none; this one cannot be \
             represented as tokenizer.ggml.model = gpt2"
                .into(),
        ));
    }
    let pre_tokenizer = tj.get("pre_tokenizer").unwrap_or(&Value::Null);
    let pre = recognise_pre(pre_tokenizer).map_err(|w| err(format!("field pre_tokenizer: {w}")))?;
    if pre_tokenizer
        .to_string()
        .contains("\"add_prefix_space\":true")
    {
        notes.push(format!(
            "{file}: the ByteLevel pre-tokenizer adds a prefix space (add_prefix_space: true); \
             GGUF's {pre} pre-tokenizer (llama.cpp, tern) does not, so the first word of a \
             text can get a different token than with tokenizer.json"
        ));
    }

    let n = config.vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![TOKEN_NORMAL; n];
    let mut place = |id: u64, tok: &str, what: &str| -> Result<(), ModelError> {
        let i = usize::try_from(id).ok().filter(|&i| i < n).ok_or_else(|| {
            err(format!(
                "{what} {tok:?} has id {id}, outside the model's vocab_size {n}"
            ))
        })?;
        tokens[i] = Some(tok.to_string());
        Ok(())
    };
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| err("field model.vocab: missing or not an object".into()))?;
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| err(format!("field model.vocab.{tok}: not a token id")))?;
        place(id, tok, "token")?;
    }
    let mut specials: HashMap<String, u32> = HashMap::new();
    for (k, t) in tj
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let content = t
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| err(format!("field added_tokens[{k}].content: missing")))?;
        let id = t
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| err(format!("field added_tokens[{k}].id: missing")))?;
        place(id, content, "added token")?;
        let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
        types[id as usize] = if special {
            TOKEN_CONTROL
        } else {
            TOKEN_USER_DEFINED
        };
        specials.insert(content.to_string(), id as u32);
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = TOKEN_UNUSED;
                format!("[PAD{i}]")
            })
        })
        .collect();

    let merges = match model.get("merges") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(k, m)| match m {
                Value::String(s) if s.split(' ').count() == 2 => Ok(s.clone()),
                Value::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str())
                {
                    (Some(a), Some(b)) if !a.contains(' ') && !b.contains(' ') => {
                        Ok(format!("{a} {b}"))
                    }
                    _ => Err(err(format!("field model.merges[{k}]: bad merge {m}"))),
                },
                _ => Err(err(format!("field model.merges[{k}]: bad merge {m}"))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err("field model.merges: not a list".into())),
    };

    let lookup = |field: &str| -> Option<u32> {
        let t = token_field(&tc, field)?;
        specials
            .get(&t)
            .copied()
            .or_else(|| vocab.get(&t).and_then(Value::as_u64).map(|i| i as u32))
    };
    let bos = config.bos_token_id.or_else(|| lookup("bos_token"));
    let eos = config
        .eos_token_ids
        .first()
        .copied()
        .or_else(|| lookup("eos_token"));
    let eot = config
        .eos_token_ids
        .iter()
        .copied()
        .find(|&t| Some(t) != eos)
        .or_else(|| {
            specials
                .get("<|eot_id|>")
                .copied()
                .filter(|&t| Some(t) != eos)
        });
    let pad = lookup("pad_token");
    let post_adds_bos = bos.is_some_and(|b| {
        tokens.get(b as usize).is_some_and(|bos_str| {
            tj.get("post_processor")
                .is_some_and(|p| p.to_string().contains(&format!("\"{bos_str}\"")))
        })
    });
    let add_bos = tc
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(post_adds_bos || (bos.is_some() && pre == "llama-bpe"));
    Ok(Some(Vocab {
        tokens,
        types,
        merges,
        pre: pre.to_string(),
        bos,
        eos,
        eot,
        pad,
        add_bos,
        chat_template: chat_template(&tc),
    }))
}

/// Reads a gpt2-style vocabulary from GGUF metadata. `Ok(None)` when the file has no
/// tokenizer; an error for another tokenizer model or an unsupported `pre`.
pub fn from_gguf(f: &GgufFile) -> Result<Option<Vocab>, ModelError> {
    let file = f.path().display().to_string();
    let err = |what: String| ModelError::Config {
        file: file.clone(),
        what,
    };
    let model = match f.get(keys::TOKENIZER_MODEL) {
        None => return Ok(None),
        Some(v) => v
            .as_str()
            .ok_or_else(|| err("tokenizer.ggml.model is not a string".into()))?,
    };
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model = {model:?}: only byte-level BPE (gpt2) tokenizers can be \
             converted"
        )));
    }
    let strings = |key: &str| -> Result<Option<Vec<String>>, ModelError> {
        match f.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .and_then(GgufArray::as_strings)
                .map(|s| Some(s.to_vec()))
                .ok_or_else(|| err(format!("{key} is not a string array"))),
        }
    };
    let tokens =
        strings(keys::TOKENS)?.ok_or_else(|| err("tokenizer.ggml.tokens is missing".into()))?;
    let merges = strings(keys::MERGES)?.unwrap_or_default();
    let types: Vec<i32> = match f.get(keys::TOKEN_TYPE) {
        None => vec![TOKEN_NORMAL; tokens.len()],
        Some(v) => v
            .as_array()
            .and_then(GgufArray::to_i64s)
            .map(|t| t.into_iter().map(|x| x as i32).collect())
            .ok_or_else(|| err("tokenizer.ggml.token_type is not an integer array".into()))?,
    };
    if types.len() != tokens.len() {
        return Err(err(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let pre = match f.get(keys::TOKENIZER_PRE).and_then(GgufValue::as_str) {
        // Absent: BitNet b1.58 2B4T files (LLaMA-3 vocabulary; bitnet-spec.md 5.3.3).
        None | Some("llama-bpe" | "llama3" | "llama-v3") => "llama-bpe",
        Some("default" | "gpt2" | "gpt-2") => "gpt-2",
        Some(p) => {
            return Err(err(format!(
                "tokenizer.ggml.pre = {p:?} is not supported (llama-bpe, gpt-2)"
            )))
        }
    };
    let id = |key: &str| -> Result<Option<u32>, ModelError> {
        match f.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .filter(|&x| (x as usize) < tokens.len())
                .map(Some)
                .ok_or_else(|| err(format!("{key} is not a token id"))),
        }
    };
    Ok(Some(Vocab {
        bos: id(keys::BOS_ID)?,
        eos: id(keys::EOS_ID)?,
        eot: id(keys::EOT_ID)?,
        pad: id(keys::PAD_ID)?,
        add_bos: f
            .get(keys::ADD_BOS)
            .and_then(GgufValue::as_bool)
            .unwrap_or(true),
        chat_template: f
            .get(keys::CHAT_TEMPLATE)
            .and_then(GgufValue::as_str)
            .map(str::to_string),
        tokens,
        types,
        merges,
        pre: pre.to_string(),
    }))
}
