//! Writing a GGUF vocabulary (read by [`tern_model::source::vocab`]) as GGUF's
//! `tokenizer.ggml.*` keys or as `tokenizer.json` + `tokenizer_config.json`, for byte-level
//! BPE (`tokenizer.ggml.model = "gpt2"`), as llama.cpp's `convert_hf_to_gguf.py` writes it.

use crate::error::ConvertError;
use serde_json::{json, Map, Value};
use tern_gguf::{GgufArray, GgufValue, GgufWriter};
use tern_model::gguf::keys;
use tern_model::gguf_tokenizer::LLAMA3_PATTERN;
pub use tern_model::source::vocab::{TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};
use tern_model::source::{Vocab, TOKEN_CONTROL, TOKEN_UNUSED, TOKEN_USER_DEFINED};

/// Writes the `tokenizer.ggml.*` keys.
pub fn write_gguf(w: &mut GgufWriter, v: &Vocab) -> Result<(), ConvertError> {
    w.add_kv(keys::TOKENIZER_MODEL, GgufValue::String("gpt2".into()))?;
    w.add_kv(keys::TOKENIZER_PRE, GgufValue::String(v.pre.clone()))?;
    w.add_kv(
        keys::TOKENS,
        GgufValue::Array(GgufArray::String(v.tokens.clone())),
    )?;
    w.add_kv(
        keys::TOKEN_TYPE,
        GgufValue::Array(GgufArray::I32(v.types.clone())),
    )?;
    w.add_kv(
        keys::MERGES,
        GgufValue::Array(GgufArray::String(v.merges.clone())),
    )?;
    for (key, id) in [
        (keys::BOS_ID, v.bos),
        (keys::EOS_ID, v.eos),
        (keys::EOT_ID, v.eot),
        (keys::PAD_ID, v.pad),
    ] {
        if let Some(id) = id {
            w.add_kv(key, GgufValue::U32(id))?;
        }
    }
    w.add_kv(keys::ADD_BOS, GgufValue::Bool(v.add_bos))?;
    if let Some(t) = &v.chat_template {
        w.add_kv(keys::CHAT_TEMPLATE, GgufValue::String(t.clone()))?;
    }
    Ok(())
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
