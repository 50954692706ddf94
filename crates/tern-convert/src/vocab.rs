//! Tokenizers between `tokenizer.json` (+ `tokenizer_config.json`) and GGUF's
//! `tokenizer.ggml.*` keys, for byte-level BPE (`tokenizer.ggml.model = "gpt2"`), as
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

use crate::error::ConvertError;
use crate::model::{Vocab, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;
use tern_gguf::{GgufArray, GgufFile, GgufValue, GgufWriter};
use tern_model::gguf_tokenizer::{GPT2_PATTERN, LLAMA3_PATTERN};
use tern_model::ModelConfig;

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

fn read_json(path: &Path) -> Result<Value, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConvertError::io(path.display(), e))?;
    serde_json::from_str(&text)
        .map_err(|e| ConvertError::file(path.display(), format!("invalid JSON: {e}")))
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
) -> Result<Option<Vocab>, ConvertError> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let file = path.display().to_string();
    let err = |what: String| ConvertError::file(&file, what);
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
    let mut place = |id: u64, tok: &str, what: &str| -> Result<(), ConvertError> {
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

/// Writes the `tokenizer.ggml.*` keys.
pub fn write_gguf(w: &mut GgufWriter, v: &Vocab) -> Result<(), ConvertError> {
    w.add_kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))?;
    w.add_kv("tokenizer.ggml.pre", GgufValue::String(v.pre.clone()))?;
    w.add_kv(
        "tokenizer.ggml.tokens",
        GgufValue::Array(GgufArray::String(v.tokens.clone())),
    )?;
    w.add_kv(
        "tokenizer.ggml.token_type",
        GgufValue::Array(GgufArray::I32(v.types.clone())),
    )?;
    w.add_kv(
        "tokenizer.ggml.merges",
        GgufValue::Array(GgufArray::String(v.merges.clone())),
    )?;
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", v.bos),
        ("tokenizer.ggml.eos_token_id", v.eos),
        ("tokenizer.ggml.eot_token_id", v.eot),
        ("tokenizer.ggml.padding_token_id", v.pad),
    ] {
        if let Some(id) = id {
            w.add_kv(key, GgufValue::U32(id))?;
        }
    }
    w.add_kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(v.add_bos))?;
    if let Some(t) = &v.chat_template {
        w.add_kv("tokenizer.chat_template", GgufValue::String(t.clone()))?;
    }
    Ok(())
}

/// Reads a gpt2-style vocabulary from GGUF metadata. `Ok(None)` when the file has no
/// tokenizer; an error for another tokenizer model or an unsupported `pre`.
pub fn from_gguf(f: &GgufFile) -> Result<Option<Vocab>, ConvertError> {
    let file = f.path().display().to_string();
    let err = |what: String| ConvertError::file(&file, what);
    let model = match f.get("tokenizer.ggml.model") {
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
    let strings = |key: &str| -> Result<Option<Vec<String>>, ConvertError> {
        match f.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .and_then(GgufArray::as_strings)
                .map(|s| Some(s.to_vec()))
                .ok_or_else(|| err(format!("{key} is not a string array"))),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| err("tokenizer.ggml.tokens is missing".into()))?;
    let merges = strings("tokenizer.ggml.merges")?.unwrap_or_default();
    let types: Vec<i32> = match f.get("tokenizer.ggml.token_type") {
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
    let pre = match f.get("tokenizer.ggml.pre").and_then(GgufValue::as_str) {
        // Absent: BitNet b1.58 2B4T files (LLaMA-3 vocabulary; bitnet-spec.md 5.3.3).
        None | Some("llama-bpe" | "llama3" | "llama-v3") => "llama-bpe",
        Some("default" | "gpt2" | "gpt-2") => "gpt-2",
        Some(p) => {
            return Err(err(format!(
                "tokenizer.ggml.pre = {p:?} is not supported (llama-bpe, gpt-2)"
            )))
        }
    };
    let id = |key: &str| -> Result<Option<u32>, ConvertError> {
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
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        eot: id("tokenizer.ggml.eot_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        add_bos: f
            .get("tokenizer.ggml.add_bos_token")
            .and_then(GgufValue::as_bool)
            .unwrap_or(true),
        chat_template: f
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)
            .map(str::to_string),
        tokens,
        types,
        merges,
        pre: pre.to_string(),
    }))
}

/// `tokenizer.json` for a vocabulary: BPE with the pre-tokenizer `pre` names, byte-level
/// decoding, control and user-defined tokens as added tokens, and a post-processor that
/// prepends BOS when `add_bos` (so transformers adds it too).
pub fn tokenizer_json(v: &Vocab) -> Value {
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, (tok, &ty)) in v.tokens.iter().zip(&v.types).enumerate() {
        // Placeholders a converter made up for ids the tokenizer did not define.
        if ty == TOKEN_UNUSED && *tok == format!("[PAD{i}]") {
            continue;
        }
        if !vocab.contains_key(tok) {
            vocab.insert(tok.clone(), json!(i));
        }
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
            added.push(json!({
                "id": i,
                "content": tok,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": ty == TOKEN_USER_DEFINED,
                "special": ty == TOKEN_CONTROL,
            }));
        }
    }
    let llama3 = v.pre == "llama-bpe";
    let pre_tokenizer = if llama3 {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]})
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
    };
    let byte_level_post = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    let bos_token = v
        .bos
        .filter(|_| v.add_bos)
        .and_then(|b| Some((b, v.tokens.get(b as usize)?)));
    let post_processor = match bos_token {
        Some((b, bos)) => {
            json!({"type": "Sequence", "processors": [
                byte_level_post,
                {"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                          {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                 "special_tokens": {bos.as_str(): {"id": bos, "ids": [b], "tokens": [bos]}}}
            ]})
        }
        None => byte_level_post,
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": llama3,
            "vocab": vocab,
            "merges": v.merges,
        }
    })
}

/// `tokenizer_config.json`: special tokens, `add_bos_token` and the chat template.
pub fn tokenizer_config_json(v: &Vocab, max_len: usize) -> Value {
    let tok = |id: Option<u32>| id.and_then(|i| v.tokens.get(i as usize).cloned());
    let mut m = Map::new();
    m.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    m.insert("add_bos_token".into(), json!(v.add_bos));
    m.insert("add_eos_token".into(), json!(false));
    m.insert("clean_up_tokenization_spaces".into(), json!(false));
    m.insert("model_max_length".into(), json!(max_len));
    for (k, id) in [
        ("bos_token", v.bos),
        ("eos_token", v.eos),
        ("pad_token", v.pad),
    ] {
        if let Some(t) = tok(id) {
            m.insert(k.into(), json!(t));
        }
    }
    if let Some(t) = &v.chat_template {
        m.insert("chat_template".into(), json!(t));
    }
    Value::Object(m)
}
