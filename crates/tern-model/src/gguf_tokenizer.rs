//! A [`Tokenizer`] built from a GGUF file's `tokenizer.ggml.*` metadata, so GGUF models can
//! take text prompts without a separate `tokenizer.json`. The target is llama.cpp's own
//! tokenization (`src/llama-vocab.cpp`); `docs/formats.md` lists what is supported and how it
//! is checked against llama.cpp's reference vocabularies.
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE (LLaMA-3, BitNet b1.58 2B4T, GPT-2,
//!   Qwen2, ...). The vocabulary (`tokens`, already in byte-level form), `merges` (`"a b"`
//!   strings) and the split regexes that llama.cpp uses for `tokenizer.ggml.pre`, followed by a
//!   byte-level mapping without its own regex. [`GPT2_PRE_TOKENIZERS`] lists the names.
//! - `tokenizer.ggml.model = "llama"`: SentencePiece (LLaMA-1/2, 1bitLLM, Phi-3, ...).
//!   llama.cpp's SPM tokenizer repeatedly merges the adjacent pair whose concatenation is the
//!   highest-scoring token (ties: leftmost), over the whole text with spaces escaped to `▁`
//!   and one `▁` prepended (`add_space_prefix`); characters without a token become
//!   `<0xXX>` byte tokens. That is rank-ordered BPE with merges derived from the scores: every
//!   split of every token into two tokens, ranked by the token's score. See [`spm_merges`].
//!
//! Control (type 3) and unknown (type 2) tokens become special added tokens (matched in text,
//! left out by [`Tokenizer::decode`]); user-defined (type 4) tokens become plain added tokens.
//! Other models (`bert`, `t5`, `rwkv`, ...) and unknown pre-tokenizers are errors naming the
//! key, never a guess.

use tern_gguf::{GgufArray, GgufFile, GgufValue};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::{NormalizerWrapper, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::ModelError;
use crate::tokenizer::Tokenizer;

/// LLaMA-3's split regex (`tokenizer.ggml.pre` = `llama-bpe`), as in its `tokenizer.json`
/// (GGUF files are split with llama.cpp's spelling of it).
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// [`LLAMA3_PATTERN`] as llama.cpp spells it: the contractions with explicit case classes.
/// Hugging Face's `(?i:...)` also matches `'ſ` and `'K` (Kelvin sign), llama.cpp's does not.
const LLAMA3_LLAMA_CPP: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's split regex (`tokenizer.ggml.pre` = `gpt-2`).
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Qwen2's split regex: LLaMA-3's with single digits (llama.cpp's spelling of the
/// case-insensitive contractions).
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen3.5's: Qwen2's with combining marks kept with letters.
const QWEN35_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's regex as llama.cpp writes it for the pre-tokenizers built on it (no final `\s+`:
/// whitespace it leaves unmatched is a piece of its own anyway).
const GPT2_LLAMA_CPP: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// DeepSeek's CJK run, `[一-龥ࠀ-一가-퟿]+` in llama.cpp, less the whitespace in those ranges
/// (U+1680, U+2000-200A, U+2028, U+2029, U+202F, U+205F, U+3000). llama.cpp runs regexes
/// with non-ASCII characters and no `\p{..}` through `std::wregex` on a copy of the text in
/// which non-ASCII whitespace is replaced by U+000B, so only `\s` can match it; tern gets the
/// same result by taking the whitespace out of the explicit ranges.
const DEEPSEEK_CJK: &str = r"[\x{4E00}-\x{9FA5}\x{800}-\x{167F}\x{1681}-\x{1FFF}\x{200B}-\x{2027}\x{202A}-\x{202E}\x{2030}-\x{205E}\x{2060}-\x{2FFF}\x{3001}-\x{4E00}\x{AC00}-\x{D7FF}]+";

/// A `tokenizer.ggml.pre` value of `gpt2` vocabularies as llama.cpp handles it
/// (`llm_tokenizer_bpe` and `llama_vocab::impl::load`).
#[derive(Debug, Clone, Copy)]
pub struct PreTokenizer {
    /// The `tokenizer.ggml.pre` names llama.cpp treats this way.
    pub names: &'static [&'static str],
    /// Split regexes, applied one after the other, each to the pieces of the one before;
    /// matches and the text between them are both pieces.
    pub patterns: &'static [&'static str],
    /// A piece that is a whole token skips the merges.
    pub ignore_merges: bool,
    /// llama.cpp's `add_bos` when `tokenizer.ggml.add_bos_token` is absent.
    pub add_bos: bool,
    /// The llama.cpp reference vocabulary (`ggml-vocab-<name>.gguf` with `.inp`/`.out`) that
    /// checks this code path in `tests/gguf_tokenizer.rs`; `None`: not checked.
    pub verified_by: Option<&'static str>,
}

/// The pre-tokenizers tern reads. An absent `pre` means `default`, except that an absent or
/// `default` `pre` on a LLaMA-3 vocabulary means `llama-bpe` (see [`tokenizer_from_gguf`]).
pub const GPT2_PRE_TOKENIZERS: &[PreTokenizer] = &[
    PreTokenizer {
        names: &[
            "llama-bpe",
            "llama3",
            "llama-v3",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
        ],
        patterns: &[LLAMA3_LLAMA_CPP],
        ignore_merges: true,
        add_bos: true,
        verified_by: Some("llama-bpe"),
    },
    PreTokenizer {
        // LLaMA-3's regex without ignore_merges or a default BOS.
        names: &["dbrx", "smaug-bpe"],
        patterns: &[LLAMA3_LLAMA_CPP],
        ignore_merges: false,
        add_bos: false,
        verified_by: None,
    },
    PreTokenizer {
        // "gpt2" is not a llama.cpp name; tern has always read it as GPT-2.
        names: &["gpt-2", "gpt2", "phi-2", "mpt", "olmo"],
        patterns: &[GPT2_PATTERN],
        ignore_merges: false,
        add_bos: false,
        verified_by: Some("gpt-2"),
    },
    PreTokenizer {
        names: &["qwen2", "deepseek-r1-qwen", "stablelm2"],
        patterns: &[QWEN2_PATTERN],
        ignore_merges: false,
        add_bos: false,
        verified_by: Some("qwen2"),
    },
    PreTokenizer {
        names: &["qwen35"],
        patterns: &[QWEN35_PATTERN],
        ignore_merges: false,
        add_bos: false,
        verified_by: Some("qwen35"),
    },
    PreTokenizer {
        names: &[
            "starcoder",
            "refact",
            "command-r",
            "smollm",
            "codeshell",
            "exaone",
            "minerva-7b",
        ],
        patterns: &[r"\p{N}", GPT2_LLAMA_CPP],
        ignore_merges: false,
        add_bos: false,
        verified_by: Some("starcoder"),
    },
    PreTokenizer {
        names: &["falcon"],
        patterns: &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_LLAMA_CPP, r"[0-9][0-9][0-9]"],
        ignore_merges: false,
        add_bos: false,
        verified_by: Some("falcon"),
    },
    PreTokenizer {
        names: &["deepseek-llm"],
        patterns: &[
            r"[\r\n]",
            r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+",
            // llama.cpp's \x{3000}-\x{3002}, less the ideographic space (see DEEPSEEK_CJK).
            r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3001}-\x{3002}]+",
            r"\s+$",
            DEEPSEEK_CJK,
            r"\p{N}+",
        ],
        ignore_merges: false,
        add_bos: false,
        verified_by: Some("deepseek-llm"),
    },
    PreTokenizer {
        names: &["deepseek-coder"],
        patterns: &[
            r"[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            DEEPSEEK_CJK,
            r"\p{N}",
        ],
        ignore_merges: false,
        add_bos: false,
        verified_by: Some("deepseek-coder"),
    },
    PreTokenizer {
        names: &["default"],
        patterns: &[
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2_LLAMA_CPP,
            r"\p{N}+",
            r"[0-9][0-9][0-9]",
        ],
        ignore_merges: false,
        add_bos: false,
        verified_by: None,
    },
];

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Tokens longer than this (in bytes) are never the result of an SPM merge. llama.cpp has no
/// such limit, but no real vocabulary has tokens this long, and it bounds the work a hostile
/// file can cause (deriving merges costs the square of a token's length).
const MAX_SPM_MERGE_TOKEN_BYTES: usize = 1024;

/// Bound on the sum of squared token lengths (bytes, over tokens up to
/// [`MAX_SPM_MERGE_TOKEN_BYTES`]) for which merges are derived: about a second of work.
/// LLaMA's 32k vocabulary needs ~10^6 and a 256k one ~10^7; a file above this is refused.
const MAX_SPM_MERGE_WORK: u64 = 1 << 31;

const SPM_SPACE: char = '\u{2581}';

/// Builds the tokenizer described by `file`'s metadata.
///
/// `Ok(None)` when the file has no tokenizer (`tokenizer.ggml.model` absent, or `none` /
/// `no_vocab`). Errors name the key: an unsupported `tokenizer.ggml.model` (`bert`, `t5`,
/// `rwkv`, ...) or `tokenizer.ggml.pre`, and inconsistent metadata (missing or mistyped
/// arrays, lengths that disagree, bad merges, out-of-range token ids).
///
/// One deliberate difference from llama.cpp: a `gpt2` vocabulary with `<|begin_of_text|>`
/// whose `tokenizer.ggml.pre` is absent or `default` is split with LLaMA-3's regex, not
/// llama.cpp's default ones, because BitNet b1.58 GGUF files are written that way.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Option<Tokenizer>, ModelError> {
    let err = |what: String| ModelError::Config {
        file: file.path().display().to_string(),
        what,
    };
    let model = match file.get("tokenizer.ggml.model") {
        None => return Ok(None),
        Some(v) => v
            .as_str()
            .ok_or_else(|| err("tokenizer.ggml.model is not a string".into()))?,
    };
    let kind = match model {
        "none" | "no_vocab" => return Ok(None),
        "gpt2" => {
            let pre = match file.get("tokenizer.ggml.pre") {
                None => None,
                Some(v) => Some(
                    v.as_str()
                        .ok_or_else(|| err("tokenizer.ggml.pre is not a string".into()))?,
                ),
            };
            let split = gpt2_pre_tokenizer(pre).ok_or_else(|| {
                err(format!(
                    "tokenizer.ggml.pre = {:?} is not supported (tern reads {})",
                    pre.unwrap_or_default(),
                    supported_pre_names()
                ))
            })?;
            Kind::Bpe(split, matches!(pre, None | Some("default")))
        }
        "llama" => Kind::Spm,
        other => {
            return Err(err(format!(
                "tokenizer.ggml.model = {other:?} is not supported (tern reads \"llama\" \
                 (SentencePiece) and \"gpt2\" (byte-level BPE))"
            )))
        }
    };

    let meta = Meta::read(file, &err)?;
    let (mut tok, default_bos, default_add_bos) = match kind {
        Kind::Bpe(mut pre, is_default) => {
            // BitNet b1.58 2B4T's official GGUF has no `pre` (bitnet-spec.md 5.3.3) and
            // bitnet.cpp's converter writes "default" for LLaMA-3 vocabularies (BitNet PR
            // #508); llama.cpp then splits text with its default regexes and generation
            // degrades. A LLaMA-3 vocabulary gets its own regex here instead.
            if is_default && meta.tokens.iter().any(|t| t == "<|begin_of_text|>") {
                pre = &GPT2_PRE_TOKENIZERS[0];
            }
            (build_bpe(file, &meta, pre, &err)?, None, pre.add_bos)
        }
        Kind::Spm => (build_spm(file, &meta, &err)?, Some(1), true),
    };

    let n = meta.tokens.len();
    let id = |key: &str| -> Result<Option<u32>, ModelError> {
        match file.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .filter(|&x| (x as usize) < n)
                .map(Some)
                .ok_or_else(|| err(format!("{key} is not a token id below {n}"))),
        }
    };
    let flag = |key: &str, default: bool| -> Result<bool, ModelError> {
        match file.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| err(format!("{key} is not a bool"))),
        }
    };
    // llama.cpp's SPM defaults (BOS 1, EOS 2) hold when the keys are absent and in range.
    let in_range = |x: u32| ((x as usize) < n).then_some(x);
    if let Some(bos) = id("tokenizer.ggml.bos_token_id")?.or(default_bos.and_then(in_range)) {
        tok.set_bos_token_id(Some(bos));
    }
    if !flag("tokenizer.ggml.add_bos_token", default_add_bos)? {
        tok.set_bos_token_id(None);
    }
    let eos = id("tokenizer.ggml.eos_token_id")?;
    if flag("tokenizer.ggml.add_eos_token", false)? {
        let eos = eos
            .or(matches!(kind, Kind::Spm).then_some(2).and_then(in_range))
            .ok_or_else(|| {
                err("tokenizer.ggml.add_eos_token is set but there is no eos_token_id".into())
            })?;
        tok.set_eos_appended(Some(eos));
    }
    Ok(Some(tok))
}

enum Kind {
    /// The pre-tokenizer; whether `pre` was absent or `"default"`.
    Bpe(&'static PreTokenizer, bool),
    Spm,
}

/// The pre-tokenizer for a `gpt2` vocabulary's `tokenizer.ggml.pre`.
fn gpt2_pre_tokenizer(pre: Option<&str>) -> Option<&'static PreTokenizer> {
    let pre = pre.unwrap_or("default");
    GPT2_PRE_TOKENIZERS.iter().find(|p| p.names.contains(&pre))
}

fn supported_pre_names() -> String {
    let names: Vec<String> = GPT2_PRE_TOKENIZERS
        .iter()
        .flat_map(|p| p.names.iter().map(|n| format!("{n:?}")))
        .collect();
    names.join(", ")
}

/// The arrays every model kind shares, checked against each other.
struct Meta {
    /// Token strings by id; empty ones renamed `[EMPTY_<id>]` as llama.cpp does.
    tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, if present.
    types: Option<Vec<i64>>,
}

impl Meta {
    fn read(file: &GgufFile, err: &dyn Fn(String) -> ModelError) -> Result<Self, ModelError> {
        let tokens: Vec<String> = file
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .and_then(GgufArray::as_strings)
            .ok_or_else(|| err("tokenizer.ggml.tokens is missing or not a string array".into()))?
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t.clone()
                }
            })
            .collect();
        if tokens.is_empty() {
            return Err(err("tokenizer.ggml.tokens is empty".into()));
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(err("tokenizer.ggml.tokens has too many entries".into()));
        }
        let types = match file.get("tokenizer.ggml.token_type") {
            None => None,
            Some(v) => {
                let t = v.as_array().and_then(GgufArray::to_i64s).ok_or_else(|| {
                    err("tokenizer.ggml.token_type is not an integer array".into())
                })?;
                check_len("tokenizer.ggml.token_type", t.len(), tokens.len(), err)?;
                Some(t)
            }
        };
        Ok(Self { tokens, types })
    }

    /// String -> id. A string listed twice maps to its last id, as in llama.cpp's
    /// `token_to_id`.
    fn vocab(&self) -> Vocab {
        let mut vocab = Vocab::with_capacity(self.tokens.len());
        for (id, tok) in self.tokens.iter().enumerate() {
            // Fits: `read` checked the count.
            vocab.insert(tok.clone(), id as u32);
        }
        vocab
    }

    /// Control and unknown tokens as special added tokens, user-defined ones as plain added
    /// tokens matched in the raw text. `rstrip(id)` says whether a token swallows the
    /// whitespace after it (llama.cpp sets that for some models by name).
    fn add_tokens(&self, inner: &mut tokenizers::Tokenizer, rstrip: &dyn Fn(&str) -> bool) {
        let Some(types) = &self.types else { return };
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (tok, &ty) in self.tokens.iter().zip(types) {
            match ty {
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => {
                    special.push(AddedToken::from(tok.clone(), true).rstrip(rstrip(tok)))
                }
                TOKEN_TYPE_USER_DEFINED => user.push(
                    AddedToken::from(tok.clone(), false)
                        .normalized(false)
                        .rstrip(rstrip(tok)),
                ),
                _ => {}
            }
        }
        inner.add_special_tokens(&special);
        inner.add_tokens(&user);
    }
}

fn check_len(
    key: &str,
    len: usize,
    n_tokens: usize,
    err: &dyn Fn(String) -> ModelError,
) -> Result<(), ModelError> {
    if len == n_tokens {
        Ok(())
    } else {
        Err(err(format!(
            "{key} has {len} entries for {n_tokens} tokens"
        )))
    }
}

/// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
fn build_bpe(
    file: &GgufFile,
    meta: &Meta,
    pre: &PreTokenizer,
    err: &dyn Fn(String) -> ModelError,
) -> Result<Tokenizer, ModelError> {
    // llama.cpp refuses gpt2 vocabularies without merges too.
    let merges: Vec<(String, String)> = file
        .get("tokenizer.ggml.merges")
        .and_then(GgufValue::as_array)
        .and_then(GgufArray::as_strings)
        .ok_or_else(|| err("tokenizer.ggml.merges is missing or not a string array".into()))?
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| err(format!("tokenizer.ggml.merges: bad merge {m:?}")))
        })
        .collect::<Result<_, _>>()?;
    // A pair listed twice keeps its first rank, as in llama.cpp's `bpe_ranks` (the `tokenizers`
    // builder would keep the last).
    let mut seen = std::collections::HashSet::with_capacity(merges.len());
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .filter(|pair| seen.insert(pair.clone()))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(meta.vocab(), merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| {
            err(format!(
                "tokenizer.ggml.merges: cannot build the BPE model: {e}"
            ))
        })?;

    let mut steps = Vec::with_capacity(pre.patterns.len() + 1);
    for pattern in pre.patterns {
        let split = Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| err(format!("bad pre-tokenizer regex {pattern:?}: {e}")))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    )));

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(Sequence::new(steps)));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    meta.add_tokens(&mut inner, &|_| false);
    let mut tok = Tokenizer::from_tokenizer(inner);
    // Added tokens are stored as plain text, not in byte-level form: llama.cpp prints them
    // as they are, where the byte-level decoder would map e.g. `ÿ` to the byte 0xFF.
    if let Some(types) = &meta.types {
        tok.set_verbatim_tokens(types.iter().enumerate().filter_map(|(id, &t)| {
            matches!(
                t,
                TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED
            )
            .then_some(id as u32)
        }));
    }
    Ok(tok)
}

/// SentencePiece (`tokenizer.ggml.model = "llama"`) as llama.cpp runs it: see the module
/// documentation and [`spm_merges`].
fn build_spm(
    file: &GgufFile,
    meta: &Meta,
    err: &dyn Fn(String) -> ModelError,
) -> Result<Tokenizer, ModelError> {
    let n = meta.tokens.len();
    // Absent scores are 0 (llama.cpp); f32 or i32 arrays.
    let scores: Vec<f32> = match file.get("tokenizer.ggml.scores") {
        None => vec![0.0; n],
        Some(v) => {
            let scores = match v.as_array() {
                Some(GgufArray::F32(s)) => s.clone(),
                Some(GgufArray::I32(s)) => s.iter().map(|&x| x as f32).collect(),
                _ => {
                    return Err(err(
                        "tokenizer.ggml.scores is not an f32 or i32 array".into()
                    ))
                }
            };
            check_len("tokenizer.ggml.scores", scores.len(), n, err)?;
            scores
        }
    };
    let add_space_prefix = match file.get("tokenizer.ggml.add_space_prefix") {
        None => true,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| err("tokenizer.ggml.add_space_prefix is not a bool".into()))?,
    };

    let work: u64 = meta
        .tokens
        .iter()
        .map(|t| t.len())
        .filter(|&l| l <= MAX_SPM_MERGE_TOKEN_BYTES)
        .map(|l| (l * l) as u64)
        .sum();
    if work > MAX_SPM_MERGE_WORK {
        return Err(err(format!(
            "tokenizer.ggml.tokens: too many long tokens to derive SentencePiece merges from \
             (sum of squared lengths {work} > {MAX_SPM_MERGE_WORK})"
        )));
    }
    let vocab = meta.vocab();
    let merges = spm_merges(&meta.tokens, &scores, &vocab);
    // Characters without a token become byte tokens; without those, the unknown token.
    let unk = match file.get("tokenizer.ggml.unknown_token_id") {
        None => (n > 0).then_some(0),
        Some(v) => Some(v.as_u64().filter(|&x| (x as usize) < n).ok_or_else(|| {
            err(format!(
                "tokenizer.ggml.unknown_token_id is not a token id below {n}"
            ))
        })? as usize),
    };
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(meta.tokens[unk].clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| err(format!("cannot build the SentencePiece model: {e}")))?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    // Each piece of text between added tokens gets the prefix, as llama.cpp's "previous
    // fragment was a token" rule gives.
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new(
            SPM_SPACE.to_string(),
        )));
    }
    normalizers.push(NormalizerWrapper::Replace(
        Replace::new(" ", SPM_SPACE.to_string()).map_err(|e| err(e.to_string()))?,
    ));
    inner.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    let mut decoders = vec![
        DecoderWrapper::Replace(
            Replace::new(SPM_SPACE.to_string(), " ").map_err(|e| err(e.to_string()))?,
        ),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    inner.with_decoder(Some(DecoderSequence::new(decoders)));

    // llama.cpp: Phi-3's special tokens swallow the whitespace after them, except these.
    let name = file
        .get("general.name")
        .and_then(GgufValue::as_str)
        .unwrap_or_default()
        .to_lowercase();
    let phi3 = name.contains("phi-3") || name.contains("phi3");
    meta.add_tokens(&mut inner, &|tok| {
        phi3 && !matches!(tok, "<unk>" | "<s>" | "<|endoftext|>")
    });
    Ok(Tokenizer::from_tokenizer(inner))
}

/// The BPE merges equivalent to llama.cpp's SPM bigram merging: each way to split a token
/// into two tokens, ordered by the token's score, best first.
///
/// llama.cpp merges, at each step, the adjacent pair whose concatenation is a token with the
/// highest score, the leftmost on ties; a rank-ordered BPE does the same with the lowest
/// rank, leftmost on ties, so ranks in score order reproduce it as long as scores differ.
/// Equal scores need a rule. Real vocabularies tie only on runs of `▁` (all -1e9 in LLaMA's):
/// llama.cpp grows the leftmost run token first, which ranking longer tokens first
/// reproduces. Remaining ties (none in the reference vocabularies) go by token id, then by
/// the ids of the two halves, as Hugging Face's SentencePiece converter orders them.
pub fn spm_merges(tokens: &[String], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    struct Candidate {
        score: f32,
        len: usize,
        id: u32,
        left: u32,
        right: u32,
        split: usize,
    }
    let mut candidates = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        // Only the id a string resolves to takes part (duplicates keep the last id).
        if vocab.get(tok) != Some(&(id as u32)) || tok.len() > MAX_SPM_MERGE_TOKEN_BYTES {
            continue;
        }
        for (split, _) in tok.char_indices().skip(1) {
            if let (Some(&left), Some(&right)) =
                (vocab.get(&tok[..split]), vocab.get(&tok[split..]))
            {
                candidates.push(Candidate {
                    score: scores[id],
                    len: tok.len(),
                    id: id as u32,
                    left,
                    right,
                    split,
                });
            }
        }
    }
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.len.cmp(&a.len))
            .then(a.id.cmp(&b.id))
            .then(a.left.cmp(&b.left))
            .then(a.right.cmp(&b.right))
    });
    candidates
        .into_iter()
        .map(|c| {
            let tok = &tokens[c.id as usize];
            (tok[..c.split].to_string(), tok[c.split..].to_string())
        })
        .collect()
}
