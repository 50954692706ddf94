use thiserror::Error;

/// A conversion failure. Messages name the file and the tensor, key or field.
#[derive(Debug, Error)]
pub enum ConvertError {
    #[error(transparent)]
    Model(#[from] tern_model::ModelError),
    #[error(transparent)]
    Gguf(#[from] tern_gguf::GgufError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tensor {tensor}: {what}")]
    Tensor { tensor: String, what: String },
    #[error("{file}: {what}")]
    File { file: String, what: String },
    #[error("{0}")]
    Other(String),
}

impl ConvertError {
    pub fn tensor(tensor: &str, what: impl Into<String>) -> Self {
        ConvertError::Tensor {
            tensor: tensor.to_string(),
            what: what.into(),
        }
    }

    pub fn file(file: impl std::fmt::Display, what: impl Into<String>) -> Self {
        ConvertError::File {
            file: file.to_string(),
            what: what.into(),
        }
    }

    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        ConvertError::Io {
            path: path.to_string(),
            source,
        }
    }
}
