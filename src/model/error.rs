//! The model layer's error type.
//!
//! Every variant says what went wrong and, where there is one, what to do about it:
//! these messages reach operators verbatim through the CLI and the HTTP API.

use std::path::PathBuf;

/// Errors from loading, running or training a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the model needs is not there.
    #[error("{what} not found at {path}: {hint}")]
    MissingFile {
        /// What the file is (e.g. "config.json").
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// What the user can do about it.
        hint: String,
    },
    /// Reading or writing a file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "read", "write", "create" …
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The checkpoint declares an architecture this crate does not implement.
    #[error(
        "unknown architecture {0:?}: Tether runs Llama-family models (llama, smollm, mistral, qwen2)"
    )]
    UnknownArchitecture(String),
    /// A tensor does not have the shape the configuration implies.
    #[error("tensor {name} has shape {found:?}, expected {expected:?}: the weights do not match the model configuration")]
    ShapeMismatch {
        /// Tensor name in the checkpoint.
        name: String,
        /// Shape implied by the configuration.
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },
    /// A tensor the architecture needs is absent from the checkpoint.
    #[error("tensor {0} is missing from the checkpoint")]
    MissingTensor(String),
    /// A configuration value is missing or malformed.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// The model specification string could not be understood.
    #[error("invalid model spec {spec:?}: {reason}")]
    InvalidSpec {
        /// What the user passed.
        spec: String,
        /// Why it is not valid.
        reason: String,
    },
    /// The tokenizer could not be built or failed on some input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be compiled or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// Fetching the default model failed.
    #[error("fetching the default model failed: {0}")]
    Fetch(String),
    /// Downloading from the Hugging Face Hub failed.
    #[error("Hugging Face Hub: {0}")]
    Hub(String),
    /// The sequence would exceed the model's context window.
    #[error("{tokens} tokens exceed the model's context length of {context}")]
    ContextOverflow {
        /// Tokens the sequence would hold.
        tokens: usize,
        /// The model's limit.
        context: usize,
    },
    /// A LoRA adapter does not fit the model it is applied to.
    #[error("LoRA adapter: {0}")]
    Adapter(String),
    /// An argument to a model operation is out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for the model layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
