//! Opening a model by path: everything `tern run` needs besides the weights (tokenizer, chat
//! template, stop tokens), whatever the format.

use crate::chat::ChatTemplate;
use crate::error::ModelError;
use crate::gguf;
use crate::gguf_tokenizer::tokenizer_from_gguf;
use crate::hf::{self, LoadOptions};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use std::path::Path;

/// A model with its text interface.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
    /// The checkpoint's own template, or `None` when it ships none.
    pub chat_template: Option<ChatTemplate>,
    /// Tokens that end generation: the config's EOS ids plus end-of-turn tokens in the vocab.
    pub stop_tokens: Vec<u32>,
    /// Why a GGUF file's embedded tokenizer could not be built (an unsupported
    /// `tokenizer.ggml.model` or `pre`, or broken metadata); the model still loads and takes
    /// token ids.
    pub tokenizer_error: Option<String>,
}

impl Loaded {
    /// The chat template to use: the checkpoint's, else BitNet b1.58 2B4T's format.
    pub fn take_template(&mut self) -> ChatTemplate {
        self.chat_template
            .take()
            .unwrap_or_else(ChatTemplate::bitnet_2b4t)
    }
}

/// Opens a model: a Hugging Face directory (`config.json`, `*.safetensors`, optionally
/// `tokenizer.json` and `tokenizer_config.json`) or a GGUF file (`.gguf` or the GGUF magic).
/// GGUF files get a tokenizer built from `tokenizer.ggml.*` (SentencePiece `llama` or
/// byte-level BPE `gpt2`, see [`crate::gguf_tokenizer`]); when that fails the model loads
/// without one, the reason in [`Loaded::tokenizer_error`], and needs token-id prompts. Stop
/// tokens are the EOS and EOT ids of the metadata plus end-of-turn tokens.
pub fn open(path: &Path, opts: &LoadOptions) -> Result<Loaded, ModelError> {
    if !path.exists() {
        return Err(ModelError::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "model not found"),
        });
    }
    if gguf::is_gguf(path) {
        // One open (and one header parse) serves both the weights and the tokenizer.
        let file = gguf::open(path)?;
        let model = gguf::load_model_from(&file, path, opts)?;
        let (tokenizer, tokenizer_error) = match tokenizer_from_gguf(&file) {
            Ok(t) => (t, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let stop_tokens = match &tokenizer {
            Some(t) => t.stop_tokens(&model.config.eos_token_ids),
            None => model.config.eos_token_ids.clone(),
        };
        let chat_template = gguf_chat_template(&file, tokenizer.as_ref(), &model, path)?;
        return Ok(Loaded {
            model,
            tokenizer,
            chat_template,
            stop_tokens,
            tokenizer_error,
        });
    }
    if !path.is_dir() {
        return Err(ModelError::Other(format!(
            "{}: not a model (expected a Hugging Face directory with config.json or a .gguf file)",
            path.display()
        )));
    }
    let model = hf::load_model(path, opts)?;
    let tok_path = path.join("tokenizer.json");
    let mut tokenizer = if tok_path.exists() {
        Some(Tokenizer::from_file(&tok_path)?)
    } else {
        None
    };
    if let (Some(t), Some(bos)) = (tokenizer.as_mut(), model.config.bos_token_id) {
        // The config's BOS wins over guessing from the vocabulary.
        t.set_bos_token_id(Some(bos));
    }
    let tc_path = path.join("tokenizer_config.json");
    let chat_template = if tc_path.exists() {
        ChatTemplate::from_tokenizer_config(&tc_path)?
    } else {
        None
    };
    let stop_tokens = match &tokenizer {
        Some(t) => t.stop_tokens(&model.config.eos_token_ids),
        None => model.config.eos_token_ids.clone(),
    };
    Ok(Loaded {
        model,
        tokenizer,
        chat_template,
        stop_tokens,
        tokenizer_error: None,
    })
}

/// `tokenizer.chat_template` of a GGUF file, as llama.cpp uses it, except in bitnet.cpp's
/// 2B4T files (`bitnet-b1.58`, `bitnet-25`): their embedded template is not the one the model
/// was tuned with (bitnet-spec.md section 6), so those get the built-in 2B4T template.
fn gguf_chat_template(
    file: &tern_gguf::GgufFile,
    tokenizer: Option<&Tokenizer>,
    model: &Model,
    path: &Path,
) -> Result<Option<ChatTemplate>, ModelError> {
    if matches!(file.architecture(), Some("bitnet-b1.58" | "bitnet-25")) {
        return Ok(None);
    }
    let Some(text) = file
        .get("tokenizer.chat_template")
        .and_then(tern_gguf::GgufValue::as_str)
    else {
        return Ok(None);
    };
    let name = |id: Option<u32>| {
        id.and_then(|i| tokenizer.and_then(|t| t.id_to_token(i)))
            .unwrap_or_default()
    };
    let bos = name(model.config.bos_token_id);
    let eos = name(model.config.eos_token_ids.first().copied());
    ChatTemplate::from_jinja(
        format!("{} (tokenizer.chat_template)", path.display()),
        text,
        bos,
        eos,
    )
    .map(Some)
}
