//! Opening a model by path: the weights in the forms the kernels run on, and everything else
//! a front end needs (tokenizer, chat template, stop tokens), whatever the format. The format
//! is the reader's business ([`crate::source`]); nothing here knows HF from GGUF.

use crate::chat::ChatTemplate;
use crate::error::ModelError;
use crate::model::{LoadOptions, Model};
use crate::source::{self, ModelInfo};
use crate::tokenizer::Tokenizer;
use std::path::Path;

/// A model with its text interface: immutable once loaded, so several sequences (a server's
/// batch) can share it.
pub struct Loaded {
    pub model: Model,
    /// What the reader found besides the tensors (name, format, architecture).
    pub info: ModelInfo,
    pub tokenizer: Option<Tokenizer>,
    /// Where the tokenizer came from (`tokenizer.json`, GGUF metadata), for `tern info`.
    pub tokenizer_origin: &'static str,
    /// The checkpoint's own template, or `None` when it ships none.
    pub chat_template: Option<ChatTemplate>,
    pub chat_template_origin: &'static str,
    /// Tokens that end generation: the config's EOS ids plus end-of-turn tokens in the vocab.
    pub stop_tokens: Vec<u32>,
    /// Why a GGUF file's embedded tokenizer could not be built (an unsupported
    /// `tokenizer.ggml.model` or `pre`, or broken metadata); the model still loads and takes
    /// token ids.
    pub tokenizer_error: Option<String>,
}

impl Loaded {
    /// The chat template to use, taken out of `self`: the checkpoint's, else BitNet b1.58
    /// 2B4T's format.
    pub fn take_template(&mut self) -> ChatTemplate {
        self.chat_template
            .take()
            .unwrap_or_else(ChatTemplate::bitnet_2b4t)
    }

    /// The tokenizer, or an error saying why there is none and what to do instead.
    pub fn require_tokenizer(&self) -> Result<&Tokenizer, ModelError> {
        self.tokenizer.as_ref().ok_or_else(|| {
            ModelError::Other(format!(
                "the model has no tokenizer ({}): give token ids instead of text",
                self.tokenizer_error.as_deref().unwrap_or(
                    "a directory without tokenizer.json, or a GGUF file without tokenizer.ggml.*"
                )
            ))
        })
    }
}

/// Opens a model: a Hugging Face directory (`config.json`, `*.safetensors`, optionally
/// `tokenizer.json` and `tokenizer_config.json`) or a GGUF file (`.gguf` or the GGUF magic),
/// through its format's reader ([`source::open`]) and [`Model::from_source`].
pub fn open(path: &Path, opts: &LoadOptions) -> Result<Loaded, ModelError> {
    let src = source::open(path)?;
    let model = Model::from_source(src.as_ref(), opts)?;
    let text = src.text()?;
    Ok(Loaded {
        model,
        info: src.info().clone(),
        tokenizer: text.tokenizer,
        tokenizer_origin: text.tokenizer_origin,
        chat_template: text.chat_template,
        chat_template_origin: text.chat_template_origin,
        stop_tokens: text.stop_tokens,
        tokenizer_error: text.tokenizer_error,
    })
}
