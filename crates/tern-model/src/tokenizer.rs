//! Text <-> token ids through a Hugging Face `tokenizer.json` (the `tokenizers` crate, built
//! without C dependencies: `fancy-regex` instead of Oniguruma).
//!
//! Two things here go beyond a thin wrapper, both because generation gets them wrong otherwise:
//! the BOS is added exactly once (`bitnet-spec.md` section 6), and streamed output never shows
//! half of a multi-byte character.

use std::path::Path;

use crate::error::ModelError;

/// Token strings that end a turn or a document in the tokenizer families we meet; see
/// [`Tokenizer::stop_tokens`].
pub const STOP_TOKEN_NAMES: [&str; 5] = [
    "<|eot_id|>",
    "<|end_of_text|>",
    "</s>",
    "<|im_end|>",
    "<|endoftext|>",
];

/// BOS spellings tried when the post-processor does not reveal the BOS (LLaMA-3, LLaMA-2 /
/// SentencePiece, Gemma, Yi).
const BOS_TOKEN_NAMES: [&str; 4] = ["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"];

/// A loaded tokenizer plus the BOS id it will add.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    /// The id `encode` appends with `add_bos` (GGUF `tokenizer.ggml.add_eos_token`).
    eos_appended: Option<u32>,
    /// Ids (indexed by id) whose text decoding copies as it is, see
    /// [`set_verbatim_tokens`](Self::set_verbatim_tokens).
    verbatim: Option<std::sync::Arc<Vec<bool>>>,
    /// One past the largest id (model vocabulary and added tokens), i.e. the logits length
    /// the tokenizer can address. Not `get_vocab_size(true)`, which double-counts tokens that
    /// are both in the model vocabulary and added.
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`. Errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| ModelError::Config {
            file: path.display().to_string(),
            what: format!("cannot load tokenizer: {e}"),
        })?;
        Ok(Self::from_tokenizer(inner))
    }

    /// Wraps an already built tokenizer and detects its BOS: first the token the
    /// post-processor prepends when asked for special tokens, otherwise the first of
    /// `<|begin_of_text|>`, `<s>`, `<bos>`, `<|startoftext|>` in the vocabulary. Override with
    /// [`set_bos_token_id`](Self::set_bos_token_id) when the model config says otherwise.
    pub fn from_tokenizer(inner: tokenizers::Tokenizer) -> Self {
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        let bos = post_processor_bos(&inner)
            .or_else(|| BOS_TOKEN_NAMES.iter().find_map(|t| inner.token_to_id(t)));
        Self {
            inner,
            bos,
            eos_appended: None,
            verbatim: None,
            vocab_size,
        }
    }

    /// The wrapped `tokenizers` tokenizer, for anything this type does not expose.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The id [`encode`](Self::encode) adds with `add_bos`, if the tokenizer has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    /// Replaces the detected BOS (e.g. with `bos_token_id` from the model config).
    pub fn set_bos_token_id(&mut self, bos: Option<u32>) {
        self.bos = bos;
    }

    /// Makes [`encode`](Self::encode) with `add_bos` also end the ids with `eos` (once), as
    /// llama.cpp does for vocabularies with `tokenizer.ggml.add_eos_token`.
    pub fn set_eos_appended(&mut self, eos: Option<u32>) {
        self.eos_appended = eos;
    }

    /// Makes decoding copy the text of these tokens as it is instead of passing it through the
    /// decoder, as llama.cpp prints control and user-defined tokens. A byte-level decoder
    /// would otherwise read a token stored as `ÿ` (DeepSeek's vocabularies have such added
    /// tokens) as the byte 0xFF.
    pub fn set_verbatim_tokens(&mut self, ids: impl IntoIterator<Item = u32>) {
        let mut v = vec![false; self.vocab_size];
        for id in ids {
            if let Some(x) = v.get_mut(id as usize) {
                *x = true;
            }
        }
        self.verbatim = Some(std::sync::Arc::new(v));
    }

    /// The id [`encode`](Self::encode) appends with `add_bos`, if any.
    pub fn eos_appended(&self) -> Option<u32> {
        self.eos_appended
    }

    /// Encodes `text`; with `add_bos` the result starts with exactly one BOS (and ends with
    /// one EOS for tokenizers set up with [`set_eos_appended`](Self::set_eos_appended)).
    ///
    /// The rule: the text is always encoded without the post-processor's special tokens
    /// (special-token strings written in the text are still recognised), then a run of BOS
    /// ids at the start is collapsed to one, or one BOS is prepended if there is none. So
    /// neither a post-processor that adds BOS nor a chat template that writes the BOS string
    /// (the 2B4T one does) can double it. Without `add_bos` the ids are exactly what the text
    /// says. If no BOS is known, `add_bos` falls back to the post-processor's own template.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, ModelError> {
        let use_post_processor = add_bos && self.bos.is_none();
        let encoding = self
            .inner
            .encode(text, use_post_processor)
            .map_err(|e| ModelError::Other(format!("tokenizer: cannot encode text: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        if let (true, Some(bos)) = (add_bos, self.bos) {
            let leading = ids.iter().take_while(|&&id| id == bos).count();
            match leading {
                0 => ids.insert(0, bos),
                1 => {}
                n => {
                    ids.drain(..n - 1);
                }
            }
        }
        if let (true, Some(eos)) = (add_bos, self.eos_appended) {
            if ids.last() != Some(&eos) {
                ids.push(eos);
            }
        }
        Ok(ids)
    }

    /// Decodes ids to text, leaving out special tokens (BOS, `<|eot_id|>`, ...), which is
    /// what a user should see.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, true)
    }

    /// Decodes ids to text, special tokens included (for debugging and prompt dumps).
    pub fn decode_raw(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false)
    }

    fn decode_with(&self, ids: &[u32], skip_special: bool) -> String {
        let Some(verbatim) = &self.verbatim else {
            return self.decode_run(ids, skip_special);
        };
        let mut out = String::new();
        let mut start = 0;
        for (i, &id) in ids.iter().enumerate() {
            if !verbatim.get(id as usize).copied().unwrap_or(false) {
                continue;
            }
            out += &self.decode_run(&ids[start..i], skip_special);
            start = i + 1;
            if let Some(text) = self.inner.id_to_token(id) {
                let special = self.inner.get_added_vocabulary().is_special_token(&text);
                if !(skip_special && special) {
                    out += &text;
                }
            }
        }
        out += &self.decode_run(&ids[start..], skip_special);
        out
    }

    fn decode_run(&self, ids: &[u32], skip_special: bool) -> String {
        if ids.is_empty() {
            return String::new();
        }
        // The crate's decoders do not fail in practice; should one, the raw token pieces are
        // better than losing the text.
        self.inner.decode(ids, skip_special).unwrap_or_else(|_| {
            ids.iter()
                .filter_map(|&id| self.inner.id_to_token(id))
                .collect()
        })
    }

    /// A decoder for tokens arriving one at a time, skipping special tokens.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self, true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// One past the largest token id, added tokens included. The model's embedding table may
    /// be larger (padded); it must not be smaller.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The ids that end generation: `config_eos` (from the model config) followed by every
    /// token of [`STOP_TOKEN_NAMES`] this vocabulary has, without duplicates. Configs often
    /// list only the document end while chat models end turns with another token
    /// (`<|eot_id|>` for 2B4T), so both are needed.
    pub fn stop_tokens(&self, config_eos: &[u32]) -> Vec<u32> {
        let mut stops = Vec::with_capacity(config_eos.len() + STOP_TOKEN_NAMES.len());
        let named = STOP_TOKEN_NAMES.iter().filter_map(|t| self.token_to_id(t));
        for id in config_eos.iter().copied().chain(named) {
            if !stops.contains(&id) {
                stops.push(id);
            }
        }
        stops
    }
}

/// The id a post-processor prepends when special tokens are requested, if it is an added
/// special token (so a template that only appends EOS is not mistaken for a BOS).
fn post_processor_bos(tok: &tokenizers::Tokenizer) -> Option<u32> {
    let with = tok.encode("a", true).ok()?;
    let without = tok.encode("a", false).ok()?;
    let (with, without) = (with.get_ids(), without.get_ids());
    let first = *with.first()?;
    if with.len() <= without.len() || without.first() == Some(&first) {
        return None;
    }
    let token = tok.id_to_token(first)?;
    tok.get_added_vocabulary()
        .is_special_token(&token)
        .then_some(first)
}

/// Turns a stream of token ids into text chunks that are always complete UTF-8 characters.
///
/// Byte-level BPE and byte-fallback tokenizers split one character over several tokens; a
/// token-by-token decode would show U+FFFD for each piece. This keeps the ids since the last
/// emitted chunk, decodes them with a few tokens of left context (so decoders that strip a
/// leading space on the first token, like SentencePiece's, see the same context as a full
/// decode), and only emits once the text no longer ends in an incomplete character. The
/// concatenation of all chunks plus [`flush`](Self::flush) equals decoding all ids at once.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    /// Ids from the context start; only the tail after `read` is not emitted yet.
    ids: Vec<u32>,
    /// Start of the left context within `ids`.
    prefix: usize,
    /// End of what has been emitted within `ids`.
    read: usize,
}

/// After this many held tokens a trailing U+FFFD is taken as real (an invalid byte sequence
/// or a literal replacement character) rather than an incomplete one: a UTF-8 character has
/// at most 4 bytes, so byte pieces complete it within 4 tokens.
const MAX_HELD_TOKENS: usize = 8;

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tok,
            skip_special: skip_special_tokens,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds one token; returns the newly completed text, if any.
    pub fn step(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        self.emit(false)
    }

    /// Returns whatever is still held back (an incomplete character becomes U+FFFD). Call
    /// once the stream ends.
    pub fn flush(&mut self) -> Option<String> {
        self.emit(true)
    }

    fn emit(&mut self, force: bool) -> Option<String> {
        if self.read == self.ids.len() {
            return None;
        }
        let before = self
            .tok
            .decode_with(&self.ids[self.prefix..self.read], self.skip_special);
        let after = self
            .tok
            .decode_with(&self.ids[self.prefix..], self.skip_special);
        let held = self.ids.len() - self.read;
        let complete = !after.ends_with('\u{FFFD}') || held >= MAX_HELD_TOKENS;
        let grew = after.len() > before.len();
        if !(force || complete && grew) {
            return None;
        }
        // Normally `after` extends `before`. It does not when held invalid bytes join the
        // context's byte run (ByteFallback turns a whole invalid run into U+FFFDs, one per
        // byte): then the held tokens are decoded on their own, which cannot repeat text.
        let text = match after.strip_prefix(before.as_str()) {
            Some(new) => new.to_string(),
            None => self
                .tok
                .decode_with(&self.ids[self.read..], self.skip_special),
        };
        self.prefix = self.read;
        self.read = self.ids.len();
        // Keep the buffer to the left context plus new tokens.
        self.ids.drain(..self.prefix);
        self.read -= self.prefix;
        self.prefix = 0;
        (!text.is_empty()).then_some(text)
    }
}
