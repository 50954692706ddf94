//! Tokenizer and chat-template tests on small tokenizers built here: a byte-level BPE trained
//! with the `tokenizers` BpeTrainer (LLaMA-3 style, with and without a BOS post-processor) and
//! a hand-written SentencePiece-style BPE with byte fallback (LLaMA-2 style). Sampler tests live
//! in `src/sample.rs`.

use std::path::PathBuf;
use std::sync::OnceLock;

use tern_model::chat::{ChatTemplate, Message};
use tern_model::tokenizer::Tokenizer;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

const BOS: &str = "<|begin_of_text|>";
const EOT: &str = "<|eot_id|>";
/// LLaMA-3's pre-tokenizer regex; `(?!\S)` needs fancy-regex (the `regex` crate rejects it).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEXTS: [&str; 6] = [
    "hello world",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "héllo 世界 🙂",
    "  leading and trailing spaces  ",
    "line one\nline two\n\ttabbed",
    "numbers 12345 and symbols <> & 'quotes'",
];

fn tmp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tokenizer_chat_{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Trains a LLaMA-3-style byte-level BPE; with `bos_post_processor` its post-processor
/// prepends the BOS like the real LLaMA-3 tokenizer.json. Saved and reloaded from disk.
fn byte_level_tokenizer(bos_post_processor: bool) -> Tokenizer {
    // Built once per variant: tests run in parallel and would race on the file.
    static CACHE: [OnceLock<Tokenizer>; 2] = [OnceLock::new(), OnceLock::new()];
    CACHE[usize::from(bos_post_processor)]
        .get_or_init(|| train_byte_level(bos_post_processor))
        .clone()
}

fn train_byte_level(bos_post_processor: bool) -> Tokenizer {
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    let split = Split::new(
        SplitPattern::Regex(LLAMA3_SPLIT.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .unwrap();
    let byte_level = ByteLevel::new(false, true, false);
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        split.into(),
        byte_level.into(),
    ]))));
    tok.with_decoder(Some(ByteLevel::default()));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(400)
        .min_frequency(1)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![
            AddedToken::from(BOS, true),
            AddedToken::from(EOT, true),
            AddedToken::from("<|end_of_text|>", true),
        ])
        .build()
        .into();
    let corpus = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello world, hello tokenizer. Hello again, world!",
        "A ternary model has weights in minus one, zero and one.",
        "héllo 世界 🙂 héllo 世界 🙂 héllo",
        "System: You are helpful. User: Hi Assistant: Hello there",
    ];
    tok.train(&mut trainer, corpus.iter()).unwrap();
    if bos_post_processor {
        let bos_id = tok.token_to_id(BOS).unwrap();
        let template = TemplateProcessing::builder()
            .try_single(format!("{BOS} $A"))
            .unwrap()
            .special_tokens(vec![(BOS, bos_id)])
            .build()
            .unwrap();
        tok.with_post_processor(Some(template));
    }
    let path = tmp_dir(&format!("bytelevel_{bos_post_processor}")).join("tokenizer.json");
    tok.save(&path, true).unwrap();
    Tokenizer::from_file(&path).unwrap()
}

/// A LLaMA-2-style SentencePiece BPE as tokenizer.json: `▁` for spaces, byte fallback for
/// everything outside a tiny ASCII vocabulary, so every non-ASCII character is split over
/// 2-4 `<0xNN>` tokens, and a `Strip` decoder that drops the leading space.
fn sentencepiece_tokenizer() -> Tokenizer {
    static CACHE: OnceLock<Tokenizer> = OnceLock::new();
    CACHE.get_or_init(write_sentencepiece).clone()
}

fn write_sentencepiece() -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    let mut add = |t: String| {
        let id = vocab.len();
        vocab.insert(t, id.into());
    };
    for t in ["<unk>", "<s>", "</s>"] {
        add(t.to_string());
    }
    for b in 0..=255u8 {
        add(format!("<0x{b:02X}>"));
    }
    for c in "▁abcdefghijklmnopqrstuvwxyzHT,.!".chars() {
        add(c.to_string());
    }
    let merges = ["▁ h", "e l", "▁h el", "l o", "▁ w", "o r", "▁w or"];
    for m in merges {
        add(m.replace(' ', ""));
    }
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    });
    let path = tmp_dir("sentencepiece").join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    Tokenizer::from_file(&path).unwrap()
}

fn all_tokenizers() -> Vec<(&'static str, Tokenizer)> {
    vec![
        ("byte-level, BOS post-processor", byte_level_tokenizer(true)),
        ("byte-level, no post-processor", byte_level_tokenizer(false)),
        ("sentencepiece byte-fallback", sentencepiece_tokenizer()),
    ]
}

fn count(ids: &[u32], id: u32) -> usize {
    ids.iter().filter(|&&x| x == id).count()
}

// ---------------------------------------------------------------- tokenizer

#[test]
fn bos_is_detected_from_post_processor_or_vocabulary() {
    let with_pp = byte_level_tokenizer(true);
    let without_pp = byte_level_tokenizer(false);
    let bos = with_pp.token_to_id(BOS).unwrap();
    assert_eq!(with_pp.bos_token_id(), Some(bos));
    assert_eq!(without_pp.bos_token_id(), without_pp.token_to_id(BOS));
    let spm = sentencepiece_tokenizer();
    assert_eq!(spm.bos_token_id(), Some(1));
    let mut custom = sentencepiece_tokenizer();
    custom.set_bos_token_id(Some(2));
    assert_eq!(custom.encode("hello", true).unwrap()[0], 2);
}

#[test]
fn bos_appears_exactly_once() {
    for (name, tok) in all_tokenizers() {
        let bos = tok.bos_token_id().unwrap();
        let bos_str = tok.id_to_token(bos).unwrap();
        for text in TEXTS {
            let ids = tok.encode(text, true).unwrap();
            assert_eq!(ids[0], bos, "{name}: {text:?}");
            assert_eq!(count(&ids, bos), 1, "{name}: {text:?}");
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(count(&ids, bos), 0, "{name}: {text:?}");
            // A prompt that already starts with the BOS string (as HF's 2B4T docs do).
            for prefix in [bos_str.clone(), format!("{bos_str}{bos_str}")] {
                let ids = tok.encode(&format!("{prefix}{text}"), true).unwrap();
                assert_eq!(ids[0], bos, "{name}: {prefix}{text:?}");
                assert_eq!(count(&ids, bos), 1, "{name}: {prefix}{text:?}");
                assert_eq!(ids[1..], tok.encode(text, false).unwrap()[..], "{name}");
            }
        }
    }
}

#[test]
fn encode_decode_round_trips_ascii_and_multibyte() {
    for (name, tok) in all_tokenizers() {
        for text in TEXTS {
            let ids = tok.encode(text, true).unwrap();
            assert_eq!(tok.decode(&ids), text, "{name}");
            let raw = tok.decode_raw(&ids);
            assert!(
                raw.contains(&tok.id_to_token(ids[0]).unwrap()),
                "{name}: {raw:?}"
            );
        }
    }
    // The multi-byte text really goes through byte pieces in the SentencePiece model.
    let spm = sentencepiece_tokenizer();
    let ids = spm.encode("🙂", false).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| spm.id_to_token(i).unwrap()).collect();
    assert_eq!(pieces, ["▁", "<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]);
}

#[test]
fn stream_decoder_matches_full_decode_and_never_splits_a_character() {
    for (name, tok) in all_tokenizers() {
        for text in TEXTS {
            let ids = tok.encode(text, true).unwrap();
            let mut stream = tok.stream_decoder();
            let mut chunks = Vec::new();
            for &id in &ids {
                if let Some(chunk) = stream.step(id) {
                    assert!(
                        !chunk.contains('\u{FFFD}'),
                        "{name}: partial char in {chunk:?}"
                    );
                    chunks.push(chunk);
                }
            }
            if let Some(rest) = stream.flush() {
                chunks.push(rest);
            }
            assert_eq!(chunks.concat(), tok.decode(&ids), "{name}: {chunks:?}");
            assert_eq!(chunks.concat(), text, "{name}");
        }
    }
    // Byte pieces of one character: nothing until the last byte arrives.
    let spm = sentencepiece_tokenizer();
    let mut stream = spm.stream_decoder();
    let byte = |b: u8| spm.token_to_id(&format!("<0x{b:02X}>")).unwrap();
    assert_eq!(
        stream.step(spm.token_to_id("▁h").unwrap()).as_deref(),
        Some("h")
    );
    assert_eq!(
        stream.step(spm.token_to_id("▁").unwrap()).as_deref(),
        Some(" ")
    );
    for b in [0xF0, 0x9F, 0x99] {
        assert_eq!(stream.step(byte(b)), None);
    }
    assert_eq!(stream.step(byte(0x82)).as_deref(), Some("🙂"));
    // An incomplete character at the end comes out on flush.
    assert_eq!(stream.step(byte(0xE4)), None);
    assert_eq!(stream.flush().as_deref(), Some("\u{FFFD}"));
    // Invalid bytes do not stall the stream forever.
    let mut stream = spm.stream_decoder();
    let mut out = String::new();
    for _ in 0..12 {
        out.extend(stream.step(byte(0x80)));
    }
    assert!(!out.is_empty());
}

#[test]
fn stream_decoder_on_random_multibyte_text() {
    const CHARS: [char; 12] = [
        'a', 'b', ' ', 'é', 'ß', '世', '界', '🙂', '👍', '\n', '.', 'h',
    ];
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (name, tok) in all_tokenizers() {
        for _ in 0..100 {
            let len = (next() % 24) as usize;
            let text: String = (0..len).map(|_| CHARS[(next() % 12) as usize]).collect();
            let ids = tok.encode(&text, false).unwrap();
            let mut stream = tok.stream_decoder();
            let mut out = String::new();
            for &id in &ids {
                if let Some(chunk) = stream.step(id) {
                    assert!(
                        !chunk.contains('\u{FFFD}'),
                        "{name}: {text:?} gave {chunk:?}"
                    );
                    out.push_str(&chunk);
                }
            }
            out.extend(stream.flush());
            assert_eq!(out, text, "{name}");
        }
    }
}

#[test]
fn stop_tokens_add_turn_and_document_ends() {
    let tok = byte_level_tokenizer(true);
    let eot = tok.token_to_id(EOT).unwrap();
    let eos = tok.token_to_id("<|end_of_text|>").unwrap();
    assert_eq!(tok.stop_tokens(&[eos]), vec![eos, eot]);
    assert_eq!(tok.stop_tokens(&[]), vec![eot, eos]);
    assert_eq!(tok.stop_tokens(&[7, eot]), vec![7, eot, eos]);
    let spm = sentencepiece_tokenizer();
    assert_eq!(spm.stop_tokens(&[2]), vec![2]);
}

#[test]
fn vocab_size_and_token_lookup() {
    let spm = sentencepiece_tokenizer();
    assert_eq!(spm.vocab_size(), 3 + 256 + 32 + 7);
    assert_eq!(spm.token_to_id("<s>"), Some(1));
    assert_eq!(spm.token_to_id("no such token"), None);
    let tok = byte_level_tokenizer(false);
    assert!(tok.vocab_size() > 256 && tok.vocab_size() <= 400);
    assert!(tok.token_to_id(EOT).unwrap() < tok.vocab_size() as u32);
}

#[test]
fn load_errors_name_the_file() {
    let missing = tmp_dir("errors").join("missing-tokenizer.json");
    let err = Tokenizer::from_file(&missing).unwrap_err().to_string();
    assert!(err.contains("missing-tokenizer.json"), "{err}");
    let bad = tmp_dir("errors").join("bad-tokenizer.json");
    std::fs::write(&bad, "{\"model\": 3}").unwrap();
    let err = Tokenizer::from_file(&bad).unwrap_err().to_string();
    assert!(err.contains("bad-tokenizer.json"), "{err}");
}

// ---------------------------------------------------------------- chat

/// The 2B4T format written as Jinja, the way a tokenizer_config.json would carry it.
const JINJA_2B4T: &str = "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}";

fn write_config(name: &str, config: serde_json::Value) -> PathBuf {
    let dir = tmp_dir(&format!("chat_{name}"));
    for sibling in ["chat_template.jinja", "chat_template.json"] {
        let _ = std::fs::remove_file(dir.join(sibling));
    }
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    path
}

fn conversations() -> Vec<Vec<Message>> {
    vec![
        vec![Message::system("You are helpful."), Message::user("Hi")],
        vec![Message::user("  padded question \n")],
        vec![
            Message::system("Be brief."),
            Message::user("What is 2+2?"),
            Message::assistant("4"),
            Message::user("And 3+3?"),
        ],
        vec![],
    ]
}

#[test]
fn builtin_2b4t_renders_the_spec_format() {
    let t = ChatTemplate::bitnet_2b4t();
    let msgs = [Message::system("You are helpful."), Message::user("Hi")];
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "System: You are helpful.<|eot_id|>User: Hi<|eot_id|>Assistant: "
    );
    assert_eq!(
        t.render(&msgs, false).unwrap(),
        "System: You are helpful.<|eot_id|>User: Hi<|eot_id|>"
    );
    let msgs = [
        Message::user(" hello\n"),
        Message::new("ASSISTANT", "there "),
    ];
    assert_eq!(
        t.render(&msgs, false).unwrap(),
        "User: hello<|eot_id|>Assistant: there<|eot_id|>"
    );
    assert_eq!(t.eos_token(), EOT);
}

#[test]
fn jinja_template_from_tokenizer_config_matches_builtin() {
    let path = write_config(
        "string",
        serde_json::json!({
            "bos_token": {"content": BOS, "lstrip": false, "__type": "AddedToken"},
            "eos_token": "<|end_of_text|>",
            "chat_template": JINJA_2B4T,
        }),
    );
    let jinja = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
    assert_eq!(jinja.bos_token(), BOS);
    assert_eq!(jinja.eos_token(), "<|end_of_text|>");
    assert!(jinja.source().ends_with("tokenizer_config.json"));
    let builtin = ChatTemplate::bitnet_2b4t();
    for msgs in conversations() {
        for gen in [true, false] {
            assert_eq!(
                jinja.render(&msgs, gen).unwrap(),
                builtin.render(&msgs, gen).unwrap(),
                "{msgs:?}"
            );
        }
    }
}

#[test]
fn named_template_list_uses_default() {
    let path = write_config(
        "list",
        serde_json::json!({
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": JINJA_2B4T},
            ],
        }),
    );
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
    let msgs = &conversations()[0];
    assert_eq!(
        t.render(msgs, true).unwrap(),
        ChatTemplate::bitnet_2b4t().render(msgs, true).unwrap()
    );
    let path = write_config(
        "list_no_default",
        serde_json::json!({"chat_template": [{"name": "tool_use", "template": "x"}]}),
    );
    let err = ChatTemplate::from_tokenizer_config(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("default"),
        "{err}"
    );
}

#[test]
fn missing_template_is_none_and_sibling_file_wins() {
    let path = write_config("none", serde_json::json!({"bos_token": BOS}));
    assert!(ChatTemplate::from_tokenizer_config(&path)
        .unwrap()
        .is_none());
    let err = ChatTemplate::from_tokenizer_config(tmp_dir("chat_none").join("nope.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.json"), "{err}");

    let path = write_config("sibling", serde_json::json!({"chat_template": "IGNORED"}));
    std::fs::write(path.with_file_name("chat_template.jinja"), JINJA_2B4T).unwrap();
    let t = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
    assert!(t.source().ends_with("chat_template.jinja"));
    assert_eq!(
        t.render(&[Message::user("x")], false).unwrap(),
        "User: x<|eot_id|>"
    );
}

#[test]
fn bad_templates_are_errors_naming_the_source() {
    let path = write_config(
        "syntax",
        serde_json::json!({"chat_template": "{% for m in messages %}{{ m.content }"}),
    );
    let err = ChatTemplate::from_tokenizer_config(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("chat template"),
        "{err}"
    );

    let raising = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok";
    let t = ChatTemplate::from_jinja("my-template", raising, "", "").unwrap();
    assert_eq!(t.render(&[Message::user("a")], false).unwrap(), "ok");
    let err = t
        .render(&[Message::system("a")], false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("my-template") && err.contains("must start with user"),
        "{err}"
    );

    let t = ChatTemplate::from_jinja("calls-unknown", "{{ nope() }}", "", "").unwrap();
    assert!(t
        .render(&[], false)
        .unwrap_err()
        .to_string()
        .contains("calls-unknown"));
}

#[test]
fn hf_template_features_work() {
    // Python string methods (pycompat), loop variables, trim_blocks/lstrip_blocks, bos_token,
    // namespace, strftime_now and tojson: what LLaMA-3/Qwen-style templates use. The expected
    // text is what Python's jinja2 gives with transformers' settings (a newline after `}}` is
    // kept, one after `%}` is not; indentation before `{%` is dropped, before text kept).
    let template = r#"{{ bos_token }}
{% set ns = namespace(n=0) %}
{% for message in messages %}
    {% set ns.n = ns.n + 1 %}
    <{{ message.role.title() }}>{{ message['content'].strip().upper() }}{% if not loop.last %}|{% endif %}
{% endfor %}
{% if add_generation_prompt %}[{{ ns.n }}]{{ eos_token }}{% endif %}
{{ strftime_now('%Y')|length }}{{ {'a': 1}|tojson }}{{ 'x'.startswith('x') }}"#;
    let t = ChatTemplate::from_jinja("features", template, BOS, EOT).unwrap();
    let out = t
        .render(&[Message::user(" hi "), Message::assistant("yo")], true)
        .unwrap();
    assert_eq!(
        out,
        "<|begin_of_text|>\n    <User>HI|    <Assistant>YO[2]<|eot_id|>4{\"a\": 1}True"
    );
}

#[test]
fn template_with_bos_in_text_still_gives_one_bos() {
    // The real 2B4T template writes bos_token before the first message; the tokenizer must
    // not add a second one.
    let template = "{% for message in messages %}{% set content = message['role'] | capitalize + ': ' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}";
    let t = ChatTemplate::from_jinja("2b4t-hf", template, BOS, EOT).unwrap();
    let msgs = [Message::system("You are helpful."), Message::user("Hi")];
    let with_bos = t.render(&msgs, true).unwrap();
    let builtin = ChatTemplate::bitnet_2b4t().render(&msgs, true).unwrap();
    assert_eq!(with_bos, format!("{BOS}{builtin}"));
    for (name, tok) in all_tokenizers().into_iter().take(2) {
        let bos = tok.bos_token_id().unwrap();
        let a = tok.encode(&with_bos, true).unwrap();
        let b = tok.encode(&builtin, true).unwrap();
        assert_eq!(a, b, "{name}");
        assert_eq!(count(&a, bos), 1, "{name}");
        let eot = tok.token_to_id(EOT).unwrap();
        assert_eq!(
            count(&a, eot),
            2,
            "{name}: <|eot_id|> must be one special token each"
        );
    }
}
