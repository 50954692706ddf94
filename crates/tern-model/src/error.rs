use thiserror::Error;

/// Errors from loading or running a model. Messages name the file, tensor or field.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{file}: {what}")]
    Config { file: String, what: String },
    #[error("{file}: tensor {tensor}: {what}")]
    Tensor {
        file: String,
        tensor: String,
        what: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("prompt of {tokens} tokens plus {generate} to generate exceeds the context of {context} tokens")]
    ContextOverflow {
        tokens: usize,
        generate: usize,
        context: usize,
    },
    #[error("{0}")]
    Other(String),
}
