//! Tokenizers built from GGUF metadata (`tern_model::gguf_tokenizer`); `docs/formats.md`
//! ("Tokenizers") describes what each test shows.
//!
//! Always on: tiny vocabularies built with `GgufWriter` (byte-level BPE and SentencePiece),
//! hostile and random metadata, llama.cpp's SentencePiece vocabularies
//! `ggml-vocab-llama-spm.gguf` and `ggml-vocab-phi-3.gguf` (committed under
//! `tests/fixtures/vocab/` with llama.cpp's MIT licence) against the ids llama.cpp's vocab test
//! expects (`.inp` texts, `.out` ids) and against ids recorded from llama.cpp's own code on
//! generated texts (`scripts/llama_cpp_spm.py`), and every `gpt2` pre-tokenizer against the
//! pieces llama.cpp's regex engine gives (`scripts/llama_cpp_pretok.py`).
//!
//! The other reference vocabularies are too large to commit (2-16 MB each). They are read from
//! `TERN_VOCAB_DIR` (llama.cpp's `models/` directory, which `scripts/test.sh` fetches); without
//! it those tests skip visibly (`tern_testutil::skip`), and fail under `CI=true`. This file
//! alone, with the vocabularies fetched:
//!
//! ```text
//! scripts/test.sh -p tern-model --test gguf_tokenizer
//! ```

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use tern_gguf::{GgufArray, GgufFile, GgufValue, GgufWriter};
use tern_model::gguf_tokenizer::tokenizer_from_gguf;
use tern_model::tokenizer::Tokenizer;
use tern_testutil::{skip, vocab_dir};

fn strings(v: &[&str]) -> GgufValue {
    GgufValue::Array(GgufArray::String(v.iter().map(|s| s.to_string()).collect()))
}

fn gguf(kvs: &[(&str, GgufValue)], extra: &[(&str, GgufValue)]) -> GgufFile {
    let mut w = GgufWriter::new();
    for (k, v) in kvs {
        // `extra` overrides a default of the same key ([`without`] drops one).
        if !extra.iter().any(|(e, _)| e == k) {
            w.add_kv(*k, v.clone()).unwrap();
        }
    }
    for (k, v) in extra {
        w.add_kv(*k, v.clone()).unwrap();
    }
    GgufFile::from_bytes("tiny.gguf", w.to_bytes()).unwrap()
}

fn without(kvs: &[(&'static str, GgufValue)], key: &str) -> Vec<(&'static str, GgufValue)> {
    kvs.iter().filter(|(k, _)| *k != key).cloned().collect()
}

fn err_text(f: &GgufFile) -> String {
    match tokenizer_from_gguf(f) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Byte-level BPE (`gpt2`)

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

fn gpt2_kvs() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("general.architecture", GgufValue::String("llama".into())),
        ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&TOKENS)),
        ("tokenizer.ggml.merges", strings(&["a b", "Ġ ab", "Ġ c"])),
        (
            "tokenizer.ggml.token_type",
            GgufValue::Array(GgufArray::I32(vec![3, 3, 1, 1, 1, 1, 1, 4, 1, 1])),
        ),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(0)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(1)),
    ]
}

fn tiny(extra: &[(&str, GgufValue)]) -> GgufFile {
    gguf(&gpt2_kvs(), extra)
}

#[test]
fn tiny_gpt2_vocab_round_trips() {
    let f = tiny(&[("tokenizer.ggml.pre", GgufValue::String("llama-bpe".into()))]);
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
    let f = tiny(&[("tokenizer.ggml.add_bos_token", GgufValue::Bool(false))]);
    let tok = tokenizer_from_gguf(&f).unwrap().unwrap();
    assert_eq!(tok.bos_token_id(), None);
    assert_eq!(tok.encode("ab ab c", true).unwrap(), [5, 6, 9]);
}

#[test]
fn absent_or_default_pre_means_llama3_only_for_llama3_vocabularies() {
    // Without <|begin_of_text|>: llama.cpp's default regexes, which split punctuation off
    // first, unlike LLaMA-3's (and GPT-2's) " ?[^\s\p{L}\p{N}]+".
    let kvs = vec![
        ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&["Ġ", ",", "Ġ,", "a"])),
        ("tokenizer.ggml.merges", strings(&["Ġ ,"])),
    ];
    let enc = |extra: &[(&str, GgufValue)]| {
        let f = gguf(&kvs, extra);
        tokenizer_from_gguf(&f)
            .unwrap()
            .unwrap()
            .encode(" ,a", false)
            .unwrap()
    };
    let pre = |p: &str| ("tokenizer.ggml.pre", GgufValue::String(p.into()));
    assert_eq!(enc(&[]), [0, 1, 3]);
    assert_eq!(enc(&[pre("default")]), [0, 1, 3]);
    assert_eq!(enc(&[pre("llama-bpe")]), [2, 3]);
    assert_eq!(enc(&[pre("gpt-2")]), [2, 3]);
    // With it: LLaMA-3's.
    let tokens = strings(&["Ġ", ",", "Ġ,", "a", "<|begin_of_text|>"]);
    assert_eq!(enc(&[("tokenizer.ggml.tokens", tokens.clone())]), [2, 3]);
    assert_eq!(
        enc(&[("tokenizer.ggml.tokens", tokens), pre("default")]),
        [2, 3]
    );
}

#[test]
fn add_bos_defaults_follow_llama_cpp() {
    // llama.cpp adds a BOS by default only for LLaMA-3-style pre-tokenizers (and SPM).
    for (pre, bos) in [("llama-bpe", Some(0)), ("qwen2", None), ("gpt-2", None)] {
        let f = tiny(&[("tokenizer.ggml.pre", GgufValue::String(pre.into()))]);
        let tok = tokenizer_from_gguf(&f).unwrap().unwrap();
        assert_eq!(tok.bos_token_id(), bos, "{pre}");
        let f = tiny(&[
            ("tokenizer.ggml.pre", GgufValue::String(pre.into())),
            ("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)),
        ]);
        let tok = tokenizer_from_gguf(&f).unwrap().unwrap();
        assert_eq!(tok.bos_token_id(), Some(0), "{pre}");
    }
}

#[test]
fn every_checked_pre_tokenizer_has_a_passing_reference_vocab() {
    use tern_model::gguf_tokenizer::GPT2_PRE_TOKENIZERS;
    for pre in GPT2_PRE_TOKENIZERS {
        if let Some(v) = pre.verified_by {
            assert!(
                REFERENCE_VOCABS
                    .iter()
                    .any(|(name, e)| *name == v && matches!(e, Expect::Pass)),
                "{v}"
            );
        }
        // Every regex compiles (a tokenizer is built for each name).
        for name in pre.names {
            let f = tiny(&[("tokenizer.ggml.pre", GgufValue::String((*name).into()))]);
            assert!(tokenizer_from_gguf(&f).unwrap().is_some(), "{name}");
        }
    }
}

#[test]
fn added_tokens_decode_as_stored_not_as_byte_level_text() {
    // DeepSeek's vocabularies add tokens such as "ÿ" in plain text; read as byte-level text
    // it would be the byte 0xFF. llama.cpp prints added tokens as they are.
    let kvs = vec![
        ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.pre", GgufValue::String("gpt-2".into())),
        (
            "tokenizer.ggml.tokens",
            strings(&["a", "ÿ", "<|end|>", "Ġ"]),
        ),
        ("tokenizer.ggml.merges", strings(&[])),
        (
            "tokenizer.ggml.token_type",
            GgufValue::Array(GgufArray::I32(vec![1, 4, 3, 1])),
        ),
    ];
    let tok = tokenizer_from_gguf(&gguf(&kvs, &[])).unwrap().unwrap();
    let ids = tok.encode("aÿ a<|end|>", false).unwrap();
    assert_eq!(ids, [0, 1, 3, 0, 2]);
    assert_eq!(tok.decode(&ids), "aÿ a");
    assert_eq!(tok.decode_raw(&ids), "aÿ a<|end|>");
    assert_eq!(stream(&tok, &ids), "aÿ a");
}

#[test]
fn a_merge_listed_twice_keeps_its_first_rank() {
    // "a b" first (rank 0) makes "ab" before "b c" can make "bc"; repeated at rank 2 it must
    // not lose to "b c" (rank 1).
    let kvs = vec![
        ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.pre", GgufValue::String("gpt-2".into())),
        (
            "tokenizer.ggml.tokens",
            strings(&["a", "b", "c", "ab", "bc"]),
        ),
        ("tokenizer.ggml.merges", strings(&["a b", "b c", "a b"])),
    ];
    let tok = tokenizer_from_gguf(&gguf(&kvs, &[])).unwrap().unwrap();
    assert_eq!(tok.encode("abc", false).unwrap(), [3, 2]);
}

#[test]
fn add_eos_token_appends_eos_once() {
    let f = tiny(&[("tokenizer.ggml.add_eos_token", GgufValue::Bool(true))]);
    let tok = tokenizer_from_gguf(&f).unwrap().unwrap();
    assert_eq!(tok.eos_appended(), Some(1));
    assert_eq!(tok.encode("ab", true).unwrap(), [0, 5, 1]);
    assert_eq!(tok.encode("ab<|eot_id|>", true).unwrap(), [0, 5, 1]);
    assert_eq!(tok.encode("ab", false).unwrap(), [5]);
}

#[test]
fn unsupported_models_and_pre_tokenizers_are_errors_naming_the_key() {
    for model in ["t5", "rwkv", "bert", "gemma4", "plamo2"] {
        let e = err_text(&tiny(&[(
            "tokenizer.ggml.model",
            GgufValue::String(model.into()),
        )]));
        assert!(
            e.contains("tokenizer.ggml.model") && e.contains(model),
            "{e}"
        );
    }
    let e = err_text(&tiny(&[(
        "tokenizer.ggml.pre",
        GgufValue::String("deepseek-v3".into()),
    )]));
    assert!(
        e.contains("tokenizer.ggml.pre") && e.contains("deepseek-v3"),
        "{e}"
    );
    // No tokenizer at all is not an error.
    let f = gguf(&without(&gpt2_kvs(), "tokenizer.ggml.model"), &[]);
    assert!(tokenizer_from_gguf(&f).unwrap().is_none());
    let f = tiny(&[("tokenizer.ggml.model", GgufValue::String("none".into()))]);
    assert!(tokenizer_from_gguf(&f).unwrap().is_none());
}

#[test]
fn hostile_gpt2_metadata_gives_errors_naming_the_key() {
    let cases: Vec<(Vec<(&str, GgufValue)>, &str)> = vec![
        (
            vec![("tokenizer.ggml.merges", strings(&["ab"]))],
            "tokenizer.ggml.merges",
        ),
        (
            vec![("tokenizer.ggml.merges", strings(&["a zz"]))],
            "tokenizer.ggml.merges",
        ),
        (
            vec![("tokenizer.ggml.merges", GgufValue::U32(3))],
            "tokenizer.ggml.merges",
        ),
        (
            vec![("tokenizer.ggml.tokens", GgufValue::U32(3))],
            "tokenizer.ggml.tokens",
        ),
        (
            vec![("tokenizer.ggml.tokens", strings(&[]))],
            "tokenizer.ggml.tokens",
        ),
        (
            vec![(
                "tokenizer.ggml.token_type",
                GgufValue::Array(GgufArray::I32(vec![1, 1])),
            )],
            "tokenizer.ggml.token_type",
        ),
        (
            vec![("tokenizer.ggml.token_type", strings(&["x"]))],
            "tokenizer.ggml.token_type",
        ),
        (
            vec![("tokenizer.ggml.bos_token_id", GgufValue::U32(10))],
            "tokenizer.ggml.bos_token_id",
        ),
        (
            vec![("tokenizer.ggml.bos_token_id", GgufValue::I32(-1))],
            "tokenizer.ggml.bos_token_id",
        ),
        (
            vec![("tokenizer.ggml.add_bos_token", GgufValue::U8(1))],
            "tokenizer.ggml.add_bos_token",
        ),
        (
            vec![("tokenizer.ggml.pre", GgufValue::U8(1))],
            "tokenizer.ggml.pre",
        ),
        (
            vec![("tokenizer.ggml.model", GgufValue::U8(1))],
            "tokenizer.ggml.model",
        ),
    ];
    for (extra, key) in cases {
        let e = err_text(&tiny(&extra));
        assert!(e.contains(key), "{key}: {e}");
    }
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.merges"] {
        let f = gguf(&without(&gpt2_kvs(), key), &[]);
        assert!(err_text(&f).contains(key), "{key}");
    }
    let f = gguf(
        &without(&gpt2_kvs(), "tokenizer.ggml.eos_token_id"),
        &[("tokenizer.ggml.add_eos_token", GgufValue::Bool(true))],
    );
    assert!(err_text(&f).contains("tokenizer.ggml.add_eos_token"));
}

// ---------------------------------------------------------------------------------------
// SentencePiece (`llama`)

/// A small SentencePiece vocabulary: control tokens, a user-defined one, byte tokens for
/// every byte, and pieces whose scores force a particular merge order.
fn spm_kvs() -> Vec<(&'static str, GgufValue)> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    // (piece, score)
    let pieces: [(&str, f32); 14] = [
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -3.0),
        ("l", -4.0),
        ("o", -5.0),
        ("▁h", -6.0),
        ("ll", -7.0),
        ("▁he", -8.0),
        ("llo", -9.0),
        ("▁hello", -10.0),
        ("▁▁", -1e9),
        ("▁▁▁", -1e9),
        ("é", -11.0),
        ("<tool>", 0.0),
    ];
    for (p, s) in pieces {
        tokens.push(p.into());
        types.push(if p == "<tool>" { 4 } else { 1 });
        scores.push(s);
    }
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    vec![
        ("general.architecture", GgufValue::String("llama".into())),
        ("tokenizer.ggml.model", GgufValue::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.scores",
            GgufValue::Array(GgufArray::F32(scores)),
        ),
        (
            "tokenizer.ggml.token_type",
            GgufValue::Array(GgufArray::I32(types)),
        ),
    ]
}

fn spm(extra: &[(&str, GgufValue)]) -> (GgufFile, Tokenizer) {
    let f = gguf(&spm_kvs(), extra);
    let tok = tokenizer_from_gguf(&f)
        .unwrap()
        .expect("llama is supported");
    (f, tok)
}

fn id(tok: &Tokenizer, s: &str) -> u32 {
    tok.token_to_id(s)
        .unwrap_or_else(|| panic!("{s:?} not in vocab"))
}

#[test]
fn tiny_spm_vocab_merges_by_score_with_byte_fallback() {
    let (_, tok) = spm(&[]);
    // Defaults without the keys: BOS 1 added, no EOS.
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_appended(), None);
    let hello = id(&tok, "▁hello");
    assert_eq!(tok.encode("hello", false).unwrap(), [hello]);
    assert_eq!(tok.encode("hello", true).unwrap(), [1, hello]);
    // "x" has no piece: its byte token. "ü" is two bytes.
    let x = id(&tok, "<0x78>");
    assert_eq!(
        tok.encode("hello x", false).unwrap(),
        [hello, id(&tok, "▁"), x]
    );
    assert_eq!(
        tok.encode("ü", false).unwrap(),
        [id(&tok, "▁"), id(&tok, "<0xC3>"), id(&tok, "<0xBC>")]
    );
    // Runs of spaces: the leftmost run token grows first (llama.cpp), then a new one starts.
    let (s1, s2, s3) = (id(&tok, "▁"), id(&tok, "▁▁"), id(&tok, "▁▁▁"));
    assert_eq!(tok.encode("    hello", false).unwrap(), [s3, s1, hello]);
    assert_eq!(tok.encode("      ", false).unwrap(), [s3, s3, s1]);
    assert_eq!(tok.encode("   ", false).unwrap(), [s3, s1]);
    assert_eq!(tok.encode(" ", false).unwrap(), [s2]);
    // Special tokens in text are recognised; each text piece after one gets the prefix.
    assert_eq!(
        tok.encode("<s>hello</s>hello", false).unwrap(),
        [1, hello, 2, hello]
    );
    assert_eq!(
        tok.encode("hello<tool>hello", false).unwrap(),
        [hello, id(&tok, "<tool>"), hello]
    );
    // Decoding: ▁ -> space, bytes -> UTF-8, the prefix space dropped, specials skipped.
    for text in [
        "hello",
        " hello",
        "hello x",
        "ü hello  é",
        "  ",
        "hello\n\tx",
        "日本",
    ] {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(tok.decode(&ids), text, "{ids:?}");
    }
    assert_eq!(tok.decode_raw(&[1, hello, 2]), "<s> hello</s>");
    for text in ["hello", " hello x", "ü hello  é", "日本 hello"] {
        assert_eq!(stream(&tok, &tok.encode(text, true).unwrap()), text);
    }
    assert_eq!(tok.stop_tokens(&[2]), [2]);
}

/// Decodes `ids` one token at a time, as generation does.
fn stream(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut d = tok.stream_decoder();
    let mut out = String::new();
    for &id in ids {
        out.extend(d.step(id));
    }
    out.extend(d.flush());
    out
}

#[test]
fn spm_options_from_metadata() {
    let (_, tok) = spm(&[
        ("tokenizer.ggml.add_space_prefix", GgufValue::Bool(false)),
        ("tokenizer.ggml.add_bos_token", GgufValue::Bool(false)),
        ("tokenizer.ggml.add_eos_token", GgufValue::Bool(true)),
    ]);
    let (h, e) = (id(&tok, "h"), id(&tok, "e"));
    assert_eq!(tok.bos_token_id(), None);
    assert_eq!(tok.encode("he", false).unwrap(), [h, e]);
    assert_eq!(tok.encode("he", true).unwrap(), [h, e, 2]);
    assert_eq!(tok.decode(&[id(&tok, "▁he")]), " he");
    let (_, tok) = spm(&[
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(2)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(1)),
        ("tokenizer.ggml.add_eos_token", GgufValue::Bool(true)),
    ]);
    assert_eq!(tok.bos_token_id(), Some(2));
    assert_eq!(tok.eos_appended(), Some(1));
    // Integer scores are accepted (llama.cpp reads i32 too).
    let kvs = spm_kvs();
    let n = match &kvs[2].1 {
        GgufValue::Array(a) => a.len(),
        _ => unreachable!(),
    };
    let f = gguf(
        &kvs,
        &[(
            "tokenizer.ggml.scores",
            GgufValue::Array(GgufArray::I32((0..n as i32).map(|i| -i).collect())),
        )],
    );
    assert!(tokenizer_from_gguf(&f).unwrap().is_some());
    // Without scores all pieces tie; without token types nothing is special.
    let f = gguf(
        &without(
            &without(&kvs, "tokenizer.ggml.scores"),
            "tokenizer.ggml.token_type",
        ),
        &[],
    );
    let tok = tokenizer_from_gguf(&f).unwrap().unwrap();
    assert!(!tok.encode("hello", false).unwrap().is_empty());
}

#[test]
fn hostile_spm_metadata_gives_errors_naming_the_key() {
    let cases: Vec<(Vec<(&str, GgufValue)>, &str)> = vec![
        (
            vec![(
                "tokenizer.ggml.scores",
                GgufValue::Array(GgufArray::F32(vec![0.0; 3])),
            )],
            "tokenizer.ggml.scores",
        ),
        (
            vec![("tokenizer.ggml.scores", strings(&["x"]))],
            "tokenizer.ggml.scores",
        ),
        (
            vec![("tokenizer.ggml.scores", GgufValue::F32(1.0))],
            "tokenizer.ggml.scores",
        ),
        (
            vec![(
                "tokenizer.ggml.token_type",
                GgufValue::Array(GgufArray::I32(vec![1; 5000])),
            )],
            "tokenizer.ggml.token_type",
        ),
        (
            vec![("tokenizer.ggml.unknown_token_id", GgufValue::U64(u64::MAX))],
            "tokenizer.ggml.unknown_token_id",
        ),
        (
            vec![("tokenizer.ggml.eos_token_id", GgufValue::String("2".into()))],
            "tokenizer.ggml.eos_token_id",
        ),
        (
            vec![("tokenizer.ggml.add_space_prefix", GgufValue::U32(0))],
            "tokenizer.ggml.add_space_prefix",
        ),
        (
            vec![("tokenizer.ggml.add_eos_token", strings(&["yes"]))],
            "tokenizer.ggml.add_eos_token",
        ),
    ];
    for (extra, key) in cases {
        let e = match tokenizer_from_gguf(&gguf(&spm_kvs(), &extra)) {
            Ok(_) => panic!("{key}: expected an error"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(key), "{key}: {e}");
    }
    // Deriving merges costs the square of token lengths; a file that would take long is refused.
    let long: Vec<String> = (0..2100)
        .map(|i| format!("{i:04}{}", "a".repeat(1020)))
        .collect();
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    let f = gguf(
        &[
            ("tokenizer.ggml.model", GgufValue::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&long)),
        ],
        &[],
    );
    let e = err_text(&f);
    assert!(
        e.contains("tokenizer.ggml.tokens") && e.contains("too many long tokens"),
        "{e}"
    );
    // Odd but legal: empty, duplicate, NaN-scored and huge tokens load without panicking.
    let mut tokens = vec!["", "a", "a", "aa", "▁"];
    let huge = "a".repeat(5000);
    tokens.push(&huge);
    let f = gguf(
        &[
            ("tokenizer.ggml.model", GgufValue::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            (
                "tokenizer.ggml.scores",
                GgufValue::Array(GgufArray::F32(vec![
                    0.0,
                    f32::NAN,
                    1.0,
                    f32::INFINITY,
                    0.0,
                    5.0,
                ])),
            ),
        ],
        &[],
    );
    let tok = tokenizer_from_gguf(&f).unwrap().unwrap();
    // BOS 1 and EOS 2 are llama.cpp's defaults, and in range here.
    assert_eq!(tok.bos_token_id(), Some(1));
    let _ = tok.encode("aaaa aa \u{1F600}", true).unwrap();
    let _ = tok.decode(&[0, 1, 2, 3, 4, 5, 99]);
}

// ---------------------------------------------------------------------------------------
// llama.cpp's reference vocabularies

/// What tern does with each of llama.cpp's vocab-only test files.
enum Expect {
    /// Every `.inp` case gives the `.out` ids, and decodes back to the text.
    Pass,
    /// tokenizer_from_gguf fails naming this key.
    Unsupported(&'static str),
}

const REFERENCE_VOCABS: &[(&str, Expect)] = &[
    ("llama-spm", Expect::Pass),
    ("phi-3", Expect::Pass),
    ("llama-bpe", Expect::Pass),
    ("gpt-2", Expect::Pass),
    ("mpt", Expect::Pass),
    ("qwen2", Expect::Pass),
    ("qwen35", Expect::Pass),
    ("starcoder", Expect::Pass),
    ("refact", Expect::Pass),
    ("command-r", Expect::Pass),
    ("falcon", Expect::Pass),
    ("deepseek-llm", Expect::Pass),
    ("deepseek-coder", Expect::Pass),
    // WordPiece and Gemma 4's own model type.
    ("bert-bge", Expect::Unsupported("tokenizer.ggml.model")),
    ("gemma-4", Expect::Unsupported("tokenizer.ggml.model")),
];

/// Committed reference files (SentencePiece ones).
fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vocab")
}

/// Where `ggml-vocab-<name>.gguf` is: the fixtures, else `TERN_VOCAB_DIR`.
fn find_vocab(name: &str) -> Option<PathBuf> {
    let file = format!("ggml-vocab-{name}.gguf");
    [Some(fixture_dir()), vocab_dir()]
        .into_iter()
        .flatten()
        .map(|d| d.join(&file))
        .find(|p| p.exists())
}

/// (text, expected ids) pairs of llama.cpp's `<vocab>.gguf.inp` / `.out` files: cases are
/// separated by a line `__ggml_vocab_test__` (which also ends the file), ids are one line per
/// case, space separated.
fn cases(gguf: &Path) -> Vec<(String, Vec<u32>)> {
    let read = |ext: &str| {
        let mut p = gguf.as_os_str().to_owned();
        p.push(ext);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", Path::new(&p).display()))
    };
    let (inp, out) = (read(".inp"), read(".out"));
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{}: .inp and .out disagree",
        gguf.display()
    );
    texts.into_iter().map(String::from).zip(ids).collect()
}

/// Number of matching cases and the number of cases.
/// The tokenizer of a reference vocabulary file, built once per test run (the large ones take
/// a fraction of a second each and several tests use them).
fn vocab_tokenizer(path: &Path) -> Tokenizer {
    static CACHE: std::sync::Mutex<Vec<(PathBuf, Tokenizer)>> = std::sync::Mutex::new(Vec::new());
    if let Some((_, t)) = CACHE.lock().unwrap().iter().find(|(p, _)| p == path) {
        return t.clone();
    }
    let f = GgufFile::open(path).unwrap();
    let tok = tokenizer_from_gguf(&f)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .expect("a tokenizer");
    CACHE
        .lock()
        .unwrap()
        .push((path.to_path_buf(), tok.clone()));
    tok
}

fn check_reference(path: &Path, name: &str) -> (usize, usize) {
    let tok = vocab_tokenizer(path);
    let cases = cases(path);
    let mut ok = 0;
    for (text, want) in &cases {
        let got = tok.encode(text, false).unwrap();
        if &got == want {
            ok += 1;
        } else {
            eprintln!("{name}: MISMATCH {text:?}\n  want {want:?}\n  got  {got:?}");
        }
        assert_eq!(&tok.decode(&got), text, "{name}: decode of {text:?}");
    }
    (ok, cases.len())
}

#[test]
fn llama_cpp_reference_vocabs() {
    let mut missing = Vec::new();
    let mut summary = Vec::new();
    for (name, expect) in REFERENCE_VOCABS {
        let Some(path) = find_vocab(name) else {
            missing.push(*name);
            continue;
        };
        match expect {
            Expect::Pass => {
                let (ok, n) = check_reference(&path, name);
                summary.push(format!("{name} {ok}/{n}"));
                assert_eq!(ok, n, "{name}: {ok}/{n} cases match");
            }
            Expect::Unsupported(key) => {
                let f = GgufFile::open(&path).unwrap();
                let e = err_text(&f);
                assert!(e.contains(key), "{name}: {e}");
                summary.push(format!("{name} unsupported"));
            }
        }
    }
    eprintln!("reference vocabularies: {}", summary.join(", "));
    if !missing.is_empty() {
        let msg = format!(
            "reference vocabularies not found (set TERN_VOCAB_DIR to llama.cpp's models/): {}",
            missing.join(", ")
        );
        skip(&msg);
    }
}

// ---------------------------------------------------------------------------------------
// Differential test against llama.cpp's SPM algorithm

/// `llm_tokenizer_spm_session::tokenize` from llama.cpp's `src/llama-vocab.cpp`, transcribed
/// (with the space escaping and prefix of `llama_vocab::impl::tokenize`): start from UTF-8
/// characters, repeatedly merge the adjacent pair whose concatenation is the token with the
/// highest score (leftmost on ties), then emit each symbol's token or its byte tokens.
struct LlamaCppSpm {
    vocab: HashMap<String, u32>,
    scores: Vec<f32>,
}

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}
impl Eq for Bigram {}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> Ordering {
        // Max-heap: higher score first, then smaller `left`.
        self.score
            .partial_cmp(&o.score)
            .unwrap_or(Ordering::Equal)
            .then(o.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl LlamaCppSpm {
    fn new(f: &GgufFile) -> Self {
        let tokens = f
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .and_then(GgufArray::as_strings)
            .unwrap();
        let scores = f
            .get("tokenizer.ggml.scores")
            .and_then(GgufValue::as_array)
            .and_then(GgufArray::as_f32s)
            .unwrap()
            .to_vec();
        let vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Self { vocab, scores }
    }

    fn tokenize(&self, raw: &str) -> Vec<u32> {
        if raw.is_empty() {
            return Vec::new();
        }
        let text = format!(" {raw}").replace(' ', "\u{2581}");
        // (start, len, prev, next); len 0 = merged away.
        let mut sym: Vec<(usize, usize, isize, isize)> = Vec::new();
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        for (k, &start) in bounds.iter().enumerate() {
            let end = bounds.get(k + 1).copied().unwrap_or(text.len());
            let next = if end == text.len() {
                -1
            } else {
                k as isize + 1
            };
            sym.push((start, end - start, k as isize - 1, next));
        }
        let mut queue = BinaryHeap::new();
        let try_add = |queue: &mut BinaryHeap<Bigram>,
                       sym: &[(usize, usize, isize, isize)],
                       l: isize,
                       r: isize| {
            if l < 0 || r < 0 {
                return;
            }
            let (l, r) = (l as usize, r as usize);
            let piece = &text[sym[l].0..sym[l].0 + sym[l].1 + sym[r].1];
            if let Some(&id) = self.vocab.get(piece) {
                queue.push(Bigram {
                    score: self.scores[id as usize],
                    left: l,
                    right: r,
                    size: piece.len(),
                });
            }
        };
        for i in 1..sym.len() {
            try_add(&mut queue, &sym, i as isize - 1, i as isize);
        }
        while let Some(b) = queue.pop() {
            let (ln, rn) = (sym[b.left].1, sym[b.right].1);
            if ln == 0 || rn == 0 || ln + rn != b.size {
                continue;
            }
            sym[b.left].1 += rn;
            sym[b.right].1 = 0;
            let next = sym[b.right].3;
            sym[b.left].3 = next;
            if next >= 0 {
                sym[next as usize].2 = b.left as isize;
            }
            let prev = sym[b.left].2;
            try_add(&mut queue, &sym, prev, b.left as isize);
            try_add(&mut queue, &sym, b.left as isize, next);
        }
        let mut out = Vec::new();
        let mut i = 0isize;
        while i >= 0 {
            let (start, len, _, next) = sym[i as usize];
            let piece = &text[start..start + len];
            match self.vocab.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.bytes().map(|b| self.vocab[&format!("<0x{b:02X}>")])),
            }
            i = next;
        }
        out
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Texts that stress the merge order: vocabulary pieces glued together, runs of spaces (code
/// indentation), repeated characters, digits, characters without a piece (byte fallback),
/// CJK, emoji, combining marks.
fn generated_texts(tokens: &[String], types: &[i64], n: usize) -> Vec<String> {
    let normal: Vec<&str> = tokens
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == 1)
        .map(|(s, _)| s.as_str())
        .collect();
    let extras = [
        " ",
        "  ",
        "   ",
        "\n",
        "\t",
        "\n\n",
        "    ",
        "            ",
        "ab",
        "aaa",
        "ababa",
        "=====",
        "-----",
        "0",
        "123",
        "3.14",
        "é",
        "e\u{301}",
        "日本語",
        "한국어",
        "🦙",
        "🚀",
        "\u{10FFFD}",
        "\u{7f}",
        "ـ",
        "ﷺ",
        "'s",
        "''",
        "...",
        "___",
        "\r\n",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(n + 80);
    for k in 1..=70 {
        out.push(format!("{}x", " ".repeat(k)));
    }
    out.push("a".repeat(50));
    out.push("\u{2581}".repeat(5));
    for _ in 0..n {
        let mut s = String::new();
        for _ in 0..1 + rng.below(12) {
            if rng.below(3) == 0 {
                s.push_str(extras[rng.below(extras.len())]);
            } else {
                s.push_str(&normal[rng.below(normal.len())].replace('\u{2581}', " "));
            }
        }
        out.push(s);
    }
    out
}

/// Tokenizes generated texts (and the `.inp` cases, when there are some) with tern and with
/// [`LlamaCppSpm`]; returns how many differ, printing the first few.
fn differential(path: &Path, n: usize) -> usize {
    let name = path.file_name().unwrap().to_string_lossy();
    let f = GgufFile::open(path).unwrap();
    let tok = tokenizer_from_gguf(&f).unwrap().unwrap();
    let reference = LlamaCppSpm::new(&f);
    let tokens = f
        .get("tokenizer.ggml.tokens")
        .and_then(GgufValue::as_array)
        .and_then(GgufArray::as_strings)
        .unwrap();
    let types = f
        .get("tokenizer.ggml.token_type")
        .and_then(GgufValue::as_array)
        .and_then(GgufArray::to_i64s)
        .unwrap();
    let mut texts = generated_texts(tokens, &types, n);
    let mut inp = path.as_os_str().to_owned();
    inp.push(".inp");
    if Path::new(&inp).exists() {
        texts.extend(cases(path).into_iter().map(|(t, _)| t));
    }
    let (mut bad, mut streamed) = (0, 0);
    for text in &texts {
        let want = reference.tokenize(text);
        let got = tok.encode(text, false).unwrap();
        if got != want {
            bad += 1;
            if bad <= 5 {
                eprintln!("{name}: DIFFERS {text:?}\n  llama.cpp {want:?}\n  tern      {got:?}");
            }
        }
        // Texts with a literal ▁ decode it as a space, like llama.cpp.
        if !text.contains('\u{2581}') {
            assert_eq!(&tok.decode(&got), text, "{name}: decode of {text:?}");
            if streamed < 300 {
                streamed += 1;
                assert_eq!(
                    &stream(&tok, &got),
                    text,
                    "{name}: streamed decode of {text:?}"
                );
            }
        }
    }
    eprintln!(
        "{name}: {} of {} generated texts as llama.cpp",
        texts.len() - bad,
        texts.len()
    );
    bad
}

#[test]
fn spm_matches_llama_cpp_algorithm_on_generated_text() {
    let bad = differential(&fixture_dir().join("ggml-vocab-llama-spm.gguf"), 3000);
    assert_eq!(
        bad, 0,
        "texts tokenize differently from llama.cpp's algorithm"
    );
}

/// tern against ids recorded from llama.cpp's own `llm_tokenizer_spm_session` (compiled by
/// `scripts/llama_cpp_spm.py`) on generated texts: `fixtures/vocab/spm-llama.cpp.json`.
#[test]
fn spm_matches_llama_cpp_recorded_ids() {
    let path = fixture_dir().join("spm-llama.cpp.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocabs = doc["vocabs"].as_object().unwrap();
    assert!(vocabs.contains_key("llama-spm") && vocabs.contains_key("phi-3"));
    for (name, v) in vocabs {
        let f = GgufFile::open(fixture_dir().join(format!("ggml-vocab-{name}.gguf"))).unwrap();
        let tok = tokenizer_from_gguf(&f).unwrap().unwrap();
        let texts = v["texts"].as_array().unwrap();
        let ids = v["ids"].as_array().unwrap();
        assert_eq!(texts.len(), ids.len());
        let mut bad = 0;
        for (text, want) in texts.iter().zip(ids) {
            let text = text.as_str().unwrap();
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(text, false).unwrap();
            if got != want {
                bad += 1;
                if bad <= 5 {
                    eprintln!(
                        "{name}: DIFFERS {text:?}\n  llama.cpp {want:?}\n  tern      {got:?}"
                    );
                }
            }
        }
        eprintln!(
            "{name}: {} of {} texts give llama.cpp's recorded ids",
            texts.len() - bad,
            texts.len()
        );
        assert_eq!(bad, 0, "{name}");
    }
}

/// GPT-2's byte-to-unicode mapping: printable Latin-1 bytes stand for themselves, the others
/// for U+0100 onwards in byte order.
fn byte_level(b: u8) -> String {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b).to_string();
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + n).unwrap().to_string()
}

/// tern against ids recorded from llama.cpp's own `llm_tokenizer_bpe_session` (compiled by
/// `scripts/llama_cpp_bpe.py`) on texts shared by all vocabularies:
/// `fixtures/vocab/bpe-llama.cpp.json`. The vocabularies come from `TERN_VOCAB_DIR`.
#[test]
fn bpe_matches_llama_cpp_recorded_ids() {
    let path = fixture_dir().join("bpe-llama.cpp.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let texts: Vec<&str> = doc["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let mut missing = Vec::new();
    let mut summary = Vec::new();
    for (name, v) in doc["vocabs"].as_object().unwrap() {
        let Some(file) = vocab_dir()
            .map(|d| d.join(format!("ggml-vocab-{name}.gguf")))
            .filter(|p| p.exists())
        else {
            missing.push(name.clone());
            continue;
        };
        let tok = vocab_tokenizer(&file);
        let ids = v["ids"].as_array().unwrap();
        assert_eq!(ids.len(), texts.len());
        let mut bad = 0;
        for (text, want) in texts.iter().zip(ids) {
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(text, false).unwrap();
            if got != want {
                bad += 1;
                if bad <= 3 {
                    eprintln!(
                        "{name}: DIFFERS {text:?}\n  llama.cpp {want:?}\n  tern      {got:?}"
                    );
                }
            }
            // Bytes without a byte-level piece (falcon has none for 0x0B) are dropped by both.
            if text
                .bytes()
                .all(|b| tok.token_to_id(&byte_level(b)).is_some())
            {
                assert_eq!(&tok.decode(&got), text, "{name}: decode of {text:?}");
            }
        }
        summary.push(format!("{name} {}/{}", texts.len() - bad, texts.len()));
    }
    eprintln!("BPE vs llama.cpp's recorded ids: {}", summary.join(", "));
    if !missing.is_empty() {
        let msg = format!("not in TERN_VOCAB_DIR: {}", missing.join(", "));
        skip(&msg);
    }
    assert!(!summary.iter().any(|s| {
        let (ok, n) = s.rsplit_once(' ').unwrap().1.split_once('/').unwrap();
        ok != n
    }));
}

/// Baichuan's 64k SentencePiece vocabulary (in `TERN_VOCAB_DIR`; it has no `.inp`/`.out`).
#[test]
fn spm_baichuan_matches_llama_cpp_algorithm() {
    let Some(path) = vocab_dir()
        .map(|d| d.join("ggml-vocab-baichuan.gguf"))
        .filter(|p| p.exists())
    else {
        skip("set TERN_VOCAB_DIR to llama.cpp's models/ (ggml-vocab-baichuan.gguf)");
        return;
    };
    let bad = differential(&path, 1000);
    assert_eq!(
        bad, 0,
        "texts tokenize differently from llama.cpp's algorithm"
    );
}

#[test]
fn spm_phi3_specials_and_generated_text() {
    let path = fixture_dir().join("ggml-vocab-phi-3.gguf");
    assert_eq!(differential(&path, 500), 0);
    let f = GgufFile::open(&path).unwrap();
    let tok = tokenizer_from_gguf(&f).unwrap().unwrap();
    let (user, end, eot) = (
        id(&tok, "<|user|>"),
        id(&tok, "<|end|>"),
        id(&tok, "<|endoftext|>"),
    );
    assert_eq!(tok.bos_token_id(), Some(1));
    // llama.cpp gives Phi-3's special tokens (except <s>, <unk>, <|endoftext|>) rstrip.
    let a = tok.encode("<|user|>\nHi<|end|>\n", false).unwrap();
    let b = tok.encode("<|user|>Hi<|end|>", false).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.first(), Some(&user));
    assert_eq!(a.last(), Some(&end));
    let c = tok.encode("<|endoftext|> Hi", false).unwrap();
    assert_eq!(c[0], eot);
    assert_ne!(c[1..], b[1..b.len() - 1]);
    assert_eq!(tok.decode(&a), "Hi");
    assert!(tok.stop_tokens(&[eot]).contains(&eot));
}

// ---------------------------------------------------------------------------------------
// Pre-tokenizer regexes against llama.cpp's own regex engine

/// tern's pieces for every `gpt2` pre-tokenizer name against the pieces llama.cpp's
/// `unicode_regex_split` gives for the same texts (`fixtures/vocab/pretok-llama.cpp.json`,
/// made by `scripts/llama_cpp_pretok.py` from llama.cpp's `unicode.cpp` and the regex lists in
/// `llama-vocab.cpp`): ~900 texts mixing scripts, digits, punctuation, whitespace and case.
#[test]
fn pre_tokenizers_split_like_llama_cpp() {
    use tern_model::gguf_tokenizer::GPT2_PRE_TOKENIZERS;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    let path = fixture_dir().join("pretok-llama.cpp.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let texts: Vec<&str> = doc["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    // A vocabulary without <|begin_of_text|>, so `default` means llama.cpp's default.
    let kvs = vec![
        ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
        ("tokenizer.ggml.merges", strings(&["a b"])),
    ];
    let mut failures = Vec::new();
    for pre in GPT2_PRE_TOKENIZERS {
        for &name in pre.names {
            // "gpt2" is tern's alias of llama.cpp's "gpt-2".
            let key = if name == "gpt2" { "gpt-2" } else { name };
            let ty = doc["regexes_of"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: not in {}", path.display()));
            let want = doc["splits"][ty].as_array().unwrap();
            assert_eq!(want.len(), texts.len());
            let f = gguf(
                &kvs,
                &[("tokenizer.ggml.pre", GgufValue::String(name.into()))],
            );
            let tok = tokenizer_from_gguf(&f).unwrap().unwrap();
            let pt = tok.inner().get_pre_tokenizer().unwrap();
            let mut bad = 0;
            for (text, want) in texts.iter().zip(want) {
                let want: Vec<usize> = want
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect();
                let mut s = PreTokenizedString::from(*text);
                pt.pre_tokenize(&mut s).unwrap();
                let got: Vec<usize> = s
                    .get_splits(OffsetReferential::Original, OffsetType::Byte)
                    .iter()
                    .map(|(_, (a, b), _)| b - a)
                    .collect();
                if got != want {
                    bad += 1;
                    if bad <= 3 {
                        eprintln!(
                            "{name}: DIFFERS {text:?}\n  llama.cpp {want:?}\n  tern      {got:?}"
                        );
                    }
                }
            }
            if bad > 0 {
                failures.push(format!("{name} {bad}/{}", texts.len()));
            }
        }
    }
    eprintln!(
        "pre-tokenizers vs llama.cpp on {} texts: {}",
        texts.len(),
        if failures.is_empty() {
            "all identical".to_string()
        } else {
            failures.join(", ")
        }
    );
    assert!(failures.is_empty(), "{failures:?}");
}

// ---------------------------------------------------------------------------------------
// Random metadata: errors or a working tokenizer, never a panic

mod random_metadata {
    use super::*;
    use proptest::prelude::*;

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("<s>".to_string()),
            Just("\u{2581}".to_string()),
            Just("\u{2581}\u{2581}".to_string()),
            (0u8..=255).prop_map(|b| format!("<0x{b:02X}>")),
            "[a-c\u{2581} ]{1,4}",
            "\\PC{1,3}",
            ".{0,40}",
        ]
    }

    /// Mostly well-formed values, sometimes not, so that both paths are exercised.
    fn int_array(len: usize) -> impl Strategy<Value = GgufValue> {
        prop_oneof![
            6 => prop::collection::vec(prop_oneof![4 => Just(1i32), 1 => -2i32..8], len)
                .prop_map(|v| GgufValue::Array(GgufArray::I32(v))),
            1 => prop::collection::vec(-2i32..8, 0..len + 2)
                .prop_map(|v| GgufValue::Array(GgufArray::I32(v))),
            1 => Just(GgufValue::U8(1)),
        ]
    }

    fn scores(len: usize) -> impl Strategy<Value = GgufValue> {
        let f = prop_oneof![
            8 => -100.0f32..0.0,
            1 => Just(0.0f32),
            1 => Just(-1e9f32),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
        ];
        prop_oneof![
            6 => prop::collection::vec(f, len).prop_map(|v| GgufValue::Array(GgufArray::F32(v))),
            1 => prop::collection::vec(-5i32..5, 0..len + 2)
                .prop_map(|v| GgufValue::Array(GgufArray::I32(v))),
            1 => Just(strings(&["x"])),
        ]
    }

    /// Metadata for a random vocabulary (base tokens plus the concatenations the merges
    /// make), and a text to encode.
    fn file() -> impl Strategy<Value = (Vec<(String, GgufValue)>, String)> {
        (
            prop::collection::vec(token(), 1..20),
            prop::collection::vec((0usize..100, 0usize..100), 0..10),
        )
            .prop_flat_map(|(base, pairs)| {
                let n0 = base.len();
                let pairs: Vec<(usize, usize)> =
                    pairs.into_iter().map(|(a, b)| (a % n0, b % n0)).collect();
                let mut tokens = base.clone();
                let mut merges = Vec::new();
                for &(a, b) in &pairs {
                    tokens.push(format!("{}{}", base[a], base[b]));
                    merges.push(format!("{} {}", base[a], base[b]));
                }
                let n = tokens.len();
                let model = prop_oneof![5 => Just("llama"), 5 => Just("gpt2"), 1 => Just("t5")];
                let pre = prop_oneof![
                    2 => Just(None),
                    1 => Just(Some("default")),
                    2 => Just(Some("llama-bpe")),
                    1 => Just(Some("qwen2")),
                    1 => Just(Some("deepseek-llm")),
                    1 => Just(Some("falcon")),
                    1 => Just(Some("nonsense")),
                ];
                let id = || {
                    prop_oneof![
                        3 => Just(None),
                        3 => (0..n as u32).prop_map(Some),
                        1 => (0..n as u32 + 3).prop_map(Some),
                    ]
                };
                let flag = || prop_oneof![Just(None), any::<bool>().prop_map(Some)];
                let opt_types = prop_oneof![1 => Just(None), 4 => int_array(n).prop_map(Some)];
                let opt_scores = prop_oneof![1 => Just(None), 4 => scores(n).prop_map(Some)];
                (
                    Just((tokens, merges)),
                    model,
                    pre,
                    opt_types,
                    opt_scores,
                    (id(), id(), id()),
                    (flag(), flag(), flag()),
                    prop_oneof![
                        "[a-c\u{2581} ]{0,30}",
                        ".{0,60}",
                        "(<s>|</s>|<0x41>|ab| |\\n|\u{e9}|\u{1F600})*"
                    ],
                )
            })
            .prop_map(
                |((tokens, merges), model, pre, types, scores, ids, flags, text)| {
                    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
                    let merges: Vec<&str> = merges.iter().map(String::as_str).collect();
                    let mut kvs = vec![
                        (
                            "tokenizer.ggml.model".to_string(),
                            GgufValue::String(model.into()),
                        ),
                        ("tokenizer.ggml.tokens".to_string(), strings(&refs)),
                        ("tokenizer.ggml.merges".to_string(), strings(&merges)),
                    ];
                    let mut opt = |k: &str, v: Option<GgufValue>| {
                        if let Some(v) = v {
                            kvs.push((k.to_string(), v));
                        }
                    };
                    opt(
                        "tokenizer.ggml.pre",
                        pre.map(|p| GgufValue::String(p.into())),
                    );
                    opt("tokenizer.ggml.token_type", types);
                    opt("tokenizer.ggml.scores", scores);
                    opt("tokenizer.ggml.bos_token_id", ids.0.map(GgufValue::U32));
                    opt("tokenizer.ggml.eos_token_id", ids.1.map(GgufValue::U32));
                    opt("tokenizer.ggml.unknown_token_id", ids.2.map(GgufValue::U32));
                    opt("tokenizer.ggml.add_bos_token", flags.0.map(GgufValue::Bool));
                    opt("tokenizer.ggml.add_eos_token", flags.1.map(GgufValue::Bool));
                    opt(
                        "tokenizer.ggml.add_space_prefix",
                        flags.2.map(GgufValue::Bool),
                    );
                    (kvs, text)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn random_tokenizer_metadata_never_panics((kvs, text) in file()) {
            let mut w = GgufWriter::new();
            for (k, v) in &kvs {
                w.add_kv(k.as_str(), v.clone()).unwrap();
            }
            let f = GgufFile::from_bytes("random.gguf", w.to_bytes()).unwrap();
            match tokenizer_from_gguf(&f) {
                Ok(Some(tok)) => {
                    let ids = tok.encode(&text, true).unwrap();
                    let _ = tok.decode(&ids);
                    let _ = tok.decode_raw(&ids);
                    let mut d = tok.stream_decoder();
                    for &id in &ids {
                        let _ = d.step(id);
                    }
                    let _ = d.flush();
                }
                Ok(None) => {}
                Err(e) => prop_assert!(e.to_string().contains("tokenizer.ggml."), "{e}"),
            }
        }
    }
}
