use std::path::Path;

/// Every error names the file, field or tensor it is about.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{file}: {what}")]
    Config { file: String, what: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {file}: {what}")]
    Checkpoint { file: String, what: String },
    #[error("data: {0}")]
    Data(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("tensor math: {0}")]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
