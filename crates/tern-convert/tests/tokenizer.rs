//! Tokenizers through conversion: tokenizer.json -> tokenizer.ggml.* -> tokenizer.json, with
//! the same token ids from tern's tokenizer at every step, the pre-tokenizer recognised, and
//! the chat template and special ids carried along.

mod common;

use common::*;
use tern_convert::{convert, HeadType, Options, WeightType};
use tern_gguf::{GgufFile, GgufValue};
use tern_model::gguf_tokenizer::tokenizer_from_gguf;
use tern_model::tokenizer::Tokenizer;

const TEXTS: [&str; 5] = [
    "the cat sat on the mat",
    "Hello, world!\nthe thing 123 4567 sing",
    "<|begin_of_text|>the cat<|eot_id|>on the mat",
    "  multiple   spaces\n\n and 'quotes' it's we'll",
    "",
];

fn opts() -> Options {
    Options {
        ty: WeightType::TQ2_0,
        head: HeadType::Auto,
        progress: false,
    }
}

fn encodings(t: &Tokenizer) -> Vec<Vec<u32>> {
    TEXTS
        .iter()
        .flat_map(|s| [t.encode(s, true).unwrap(), t.encode(s, false).unwrap()])
        .collect()
}

/// A fixture copy with a tokenizer of `style`, converted to GGUF.
fn convert_with(style: &str, tmp: &TempDir) -> Result<std::path::PathBuf, String> {
    let dir = tmp.join(style);
    std::fs::create_dir(&dir).unwrap();
    copy_fixture("bitnet_packed", &dir);
    write_tokenizer(&dir, style);
    let out = tmp.join(format!("{style}.gguf"));
    convert(&dir, &out, &opts()).map_err(|e| e.to_string())?;
    Ok(out)
}

fn check_style(style: &str, pre: &str) {
    let tmp = TempDir::new(style);
    let out = convert_with(style, &tmp).unwrap();
    let f = GgufFile::open(&out).unwrap();
    let s = |k: &str| f.get(k).and_then(GgufValue::as_str).map(str::to_string);
    let u = |k: &str| f.get(k).and_then(GgufValue::as_u64);
    assert_eq!(s("tokenizer.ggml.model").as_deref(), Some("gpt2"));
    assert_eq!(s("tokenizer.ggml.pre").as_deref(), Some(pre));
    assert_eq!(s("tokenizer.chat_template").as_deref(), Some(CHAT_TEMPLATE));
    assert_eq!(u("tokenizer.ggml.bos_token_id"), Some(1));
    assert_eq!(u("tokenizer.ggml.eos_token_id"), Some(2));
    assert_eq!(u("tokenizer.ggml.eot_token_id"), Some(3));
    assert_eq!(u("tokenizer.ggml.padding_token_id"), None);
    assert_eq!(
        f.get("tokenizer.ggml.add_bos_token")
            .and_then(GgufValue::as_bool),
        Some(true)
    );
    let tokens = f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(tokens.len(), 256);
    let strings = tokens.as_strings().unwrap();
    assert_eq!(strings[1], "<|begin_of_text|>");
    assert_eq!(strings[255], "[PAD255]");
    let types = f
        .get("tokenizer.ggml.token_type")
        .unwrap()
        .as_array()
        .unwrap()
        .to_i64s()
        .unwrap();
    assert_eq!(&types[..5], &[3, 3, 3, 3, 1]);
    assert_eq!(types[255], 5);
    let merges = f.get("tokenizer.ggml.merges").unwrap().as_array().unwrap();
    assert_eq!(merges.as_strings().unwrap()[0], "t h");

    // Same ids from the original tokenizer.json, the GGUF metadata, and the tokenizer.json
    // rebuilt by GGUF -> HF.
    let original = Tokenizer::from_file(tmp.join(style).join("tokenizer.json")).unwrap();
    let want = encodings(&original);
    assert!(want.iter().any(|ids| ids.len() > 3));
    let from_gguf = tokenizer_from_gguf(&f).unwrap().expect("a gpt2 tokenizer");
    assert_eq!(encodings(&from_gguf), want, "{style}: GGUF tokenizer");
    let loaded = tern_model::load::open(&out, &Default::default()).unwrap();
    assert!(loaded.stop_tokens.contains(&2) && loaded.stop_tokens.contains(&3));

    let hf = tmp.join(format!("{style}-hf"));
    convert(&out, &hf, &opts()).unwrap();
    let rebuilt = Tokenizer::from_file(hf.join("tokenizer.json")).unwrap();
    assert_eq!(encodings(&rebuilt), want, "{style}: rebuilt tokenizer.json");
    assert_eq!(rebuilt.bos_token_id(), Some(1));
    let ids = original.encode(TEXTS[1], false).unwrap();
    assert_eq!(
        rebuilt.inner().decode(&ids, false).unwrap(),
        original.inner().decode(&ids, false).unwrap()
    );
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(tc["chat_template"], CHAT_TEMPLATE);
    assert_eq!(tc["bos_token"], "<|begin_of_text|>");
    assert_eq!(tc["eos_token"], "<|end_of_text|>");
    assert_eq!(tc["add_bos_token"], true);
    // And back to GGUF: the same vocabulary keys.
    let again = tmp.join("again.gguf");
    convert(&hf, &again, &opts()).unwrap();
    let g = GgufFile::open(&again).unwrap();
    for k in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ] {
        assert_eq!(g.get(k), f.get(k), "{style}: {k} after GGUF -> HF -> GGUF");
    }
}

#[test]
fn gpt2_bytelevel_tokenizer_round_trips() {
    check_style("gpt2", "gpt-2");
}

#[test]
fn llama3_tokenizer_round_trips() {
    check_style("llama3", "llama-bpe");
}

#[test]
fn unsupported_pre_tokenizer_is_a_clear_error() {
    let tmp = TempDir::new("meta");
    let e = convert_with("metaspace", &tmp).unwrap_err();
    assert!(
        e.contains("tokenizer.json") && e.contains("pre_tokenizer") && e.contains("Metaspace"),
        "{e}"
    );
}

#[test]
fn unigram_model_is_a_clear_error() {
    let tmp = TempDir::new("unigram");
    let dir = tmp.join("m");
    std::fs::create_dir(&dir).unwrap();
    copy_fixture("bitnet_packed", &dir);
    let mut tj = tokenizer_json("gpt2");
    tj["model"]["type"] = "Unigram".into();
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    let e = convert(&dir, &tmp.join("o.gguf"), &opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("Unigram") && e.contains("byte-level BPE"), "{e}");
}

/// The synthetic model with a GPT-2-style tokenizer (what `tern train` exports) converts and
/// generates the same tokens from text through the GGUF's own tokenizer.
#[test]
fn text_prompt_through_converted_gguf() {
    let tmp = TempDir::new("text");
    let dir = tmp.join("hf");
    std::fs::create_dir(&dir).unwrap();
    synthetic_hf(&dir);
    let out = tmp.join("m.gguf");
    convert(&dir, &out, &opts()).unwrap();
    let a = tern_model::load::open(&dir, &Default::default()).unwrap();
    let b = tern_model::load::open(&out, &Default::default()).unwrap();
    let ids_a = a.tokenizer.unwrap().encode("the cat sat", true).unwrap();
    let ids_b = b.tokenizer.unwrap().encode("the cat sat", true).unwrap();
    assert_eq!(ids_a, ids_b);
    assert_eq!(ids_a[0], 1);
    let (la, ga) = run(&a.model, &ids_a, 8);
    let (lb, gb) = run(&b.model, &ids_b, 8);
    assert_same(&la, &lb, "text prompt");
    assert_eq!(ga, gb);
}

/// `ByteLevel { add_prefix_space: true }` (the `tokenizers` crate's default) converts, with a
/// note: GGUF's gpt-2 pre-tokenizer adds no prefix space.
#[test]
fn prefix_space_is_noted() {
    let tmp = TempDir::new("prefix");
    let dir = tmp.join("m");
    std::fs::create_dir(&dir).unwrap();
    copy_fixture("bitnet_packed", &dir);
    write_tokenizer(&dir, "gpt2");
    let mut tj = tokenizer_json("gpt2");
    tj["pre_tokenizer"]["add_prefix_space"] = true.into();
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    let r = convert(&dir, &tmp.join("o.gguf"), &opts()).unwrap();
    assert!(
        r.notes.iter().any(|n| n.contains("add_prefix_space")),
        "{:?}",
        r.notes
    );
}
