//! Tokenizers built from GGUF metadata (`tern_model::gguf_tokenizer`).
//!
//! The always-on tests build a tiny byte-level BPE vocabulary with `GgufWriter`. The
//! reference test checks llama.cpp's own vocabulary files against the token ids llama.cpp's
//! test suite expects; it runs only when `TERN_VOCAB_DIR` names a directory holding
//! `ggml-vocab-llama-bpe.gguf` with its `.inp` and `.out` files (otherwise it prints SKIPPED).
//! They ship in llama.cpp's `models/` folder, e.g. from the llama-cpp-python sdist:
//!
//! ```text
//! pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcp
//! tar xzf /tmp/lcp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcp \
//!     --wildcards '*/vendor/llama.cpp/models/ggml-vocab-*'
//! TERN_VOCAB_DIR=$(echo /tmp/lcp/*/vendor/llama.cpp/models) cargo test -p tern-model --test gguf_tokenizer
//! ```
//!
//! `ggml-vocab-gpt-2.gguf` (GPT-2 pre-tokenizer) is checked too when present.

use std::path::{Path, PathBuf};

use tern_gguf::{GgufArray, GgufFile, GgufValue, GgufWriter};
use tern_model::gguf_tokenizer::tokenizer_from_gguf;

fn strings(v: &[&str]) -> GgufValue {
    GgufValue::Array(GgufArray::String(v.iter().map(|s| s.to_string()).collect()))
}

const TOKENS: [&str; 10] = [
    "<|begin_of_text|>",
    "<|eot_id|>",
    "a",
    "b",
    "Ġ",
    "ab",
    "Ġab",
    "<tool>",
    "c",
    "Ġc",
];

fn tiny(model: &str, extra: &[(&str, GgufValue)]) -> GgufFile {
    let defaults = [
        ("general.architecture", GgufValue::String("llama".into())),
        ("tokenizer.ggml.model", GgufValue::String(model.into())),
        ("tokenizer.ggml.tokens", strings(&TOKENS)),
        ("tokenizer.ggml.merges", strings(&["a b", "Ġ ab", "Ġ c"])),
        (
            "tokenizer.ggml.token_type",
            GgufValue::Array(GgufArray::I32(vec![3, 3, 1, 1, 1, 1, 1, 4, 1, 1])),
        ),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(0)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(1)),
    ];
    let mut w = GgufWriter::new();
    for (k, v) in &defaults {
        // `extra` overrides a default of the same key.
        if !extra.iter().any(|(e, _)| e == k) {
            w.add_kv(*k, v.clone()).unwrap();
        }
    }
    for (k, v) in extra {
        w.add_kv(*k, v.clone()).unwrap();
    }
    GgufFile::from_bytes("tiny.gguf", w.to_bytes()).unwrap()
}

#[test]
fn tiny_gpt2_vocab_round_trips() {
    let f = tiny(
        "gpt2",
        &[("tokenizer.ggml.pre", GgufValue::String("llama-bpe".into()))],
    );
    let tok = tokenizer_from_gguf(&f).unwrap().expect("gpt2 is supported");
    assert_eq!(tok.vocab_size(), TOKENS.len());
    assert_eq!(tok.bos_token_id(), Some(0));
    assert_eq!(tok.encode("ab ab c", false).unwrap(), [5, 6, 9]);
    assert_eq!(tok.encode("ab ab c", true).unwrap(), [0, 5, 6, 9]);
    // The BOS written in the text is recognised and not doubled.
    assert_eq!(
        tok.encode("<|begin_of_text|>ab<|eot_id|>", true).unwrap(),
        [0, 5, 1]
    );
    // User-defined tokens are matched whole and kept on decode.
    assert_eq!(tok.encode("ab<tool>c", false).unwrap(), [5, 7, 8]);
    assert_eq!(tok.decode(&[5, 6, 9]), "ab ab c");
    assert_eq!(tok.decode(&[0, 5, 7, 8, 1]), "ab<tool>c");
    assert_eq!(tok.decode_raw(&[0, 5, 1]), "<|begin_of_text|>ab<|eot_id|>");
    assert_eq!(tok.stop_tokens(&[1]), [1]);
    for text in ["ab", " ab", "ab ab c", "c ab", "  ab"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids), text, "{ids:?}");
    }
}

#[test]
fn absent_pre_is_supported_and_add_bos_false_disables_bos() {
    let f = tiny(
        "gpt2",
        &[("tokenizer.ggml.add_bos_token", GgufValue::Bool(false))],
    );
    let tok = tokenizer_from_gguf(&f).unwrap().unwrap();
    assert_eq!(tok.bos_token_id(), None);
    assert_eq!(tok.encode("ab ab c", true).unwrap(), [5, 6, 9]);
}

#[test]
fn unsupported_models_and_pre_tokenizers_give_none() {
    assert!(tokenizer_from_gguf(&tiny("llama", &[])).unwrap().is_none());
    let f = tiny(
        "gpt2",
        &[("tokenizer.ggml.pre", GgufValue::String("qwen2".into()))],
    );
    assert!(tokenizer_from_gguf(&f).unwrap().is_none());
    let f = tiny("gpt2", &[("tokenizer.ggml.merges", strings(&["ab"]))]);
    assert!(tokenizer_from_gguf(&f).is_err());
}

/// (text, expected ids) pairs of llama.cpp's `<vocab>.gguf.inp` / `.out` files: cases are
/// separated by a line `__ggml_vocab_test__` (which also ends the file), ids are one line per
/// case, space separated.
fn cases(dir: &Path, vocab: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(dir.join(format!("{vocab}.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("{vocab}.out"))).unwrap();
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), ids.len(), "{vocab}: .inp and .out disagree");
    texts.into_iter().map(String::from).zip(ids).collect()
}

fn check_reference(dir: &Path, vocab: &str) -> (usize, usize) {
    let f = GgufFile::open(dir.join(vocab)).unwrap();
    let tok = tokenizer_from_gguf(&f).unwrap().expect("byte-level BPE");
    let cases = cases(dir, vocab);
    let mut ok = 0;
    for (text, want) in &cases {
        let got = tok.encode(text, false).unwrap();
        if &got == want {
            ok += 1;
        } else {
            eprintln!("{vocab}: MISMATCH {text:?}\n  want {want:?}\n  got  {got:?}");
        }
        assert_eq!(&tok.decode(&got), text, "{vocab}: decode of {text:?}");
    }
    eprintln!("{vocab}: {ok}/{} cases match", cases.len());
    (ok, cases.len())
}

#[test]
fn llama_cpp_reference_vocabs() {
    let Some(dir) = std::env::var_os("TERN_VOCAB_DIR").map(PathBuf::from) else {
        eprintln!("SKIPPED: set TERN_VOCAB_DIR to llama.cpp's models/ directory");
        return;
    };
    let (ok, n) = check_reference(&dir, "ggml-vocab-llama-bpe.gguf");
    assert_eq!(ok, n, "llama-bpe: {ok}/{n} cases match");
    if dir.join("ggml-vocab-gpt-2.gguf").exists() {
        let (ok, n) = check_reference(&dir, "ggml-vocab-gpt-2.gguf");
        assert_eq!(ok, n, "gpt-2: {ok}/{n} cases match");
    }
}
