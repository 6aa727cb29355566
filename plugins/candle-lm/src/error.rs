//! The errors a user can cause: model files, configs and training data are user input, so every failure names
//! the file (and the tensor, field or line) it comes from instead of panicking.

use std::path::PathBuf;

/// Why a model directory, a weight file or a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read at all.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A JSON file (config.json, the shard index, adapter_config.json) is not valid or lacks a field.
    #[error("`{path}` is not a valid {what}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the file should have been, e.g. "model config".
        what: &'static str,
        /// serde's message, with line and column.
        message: String,
    },
    /// The config names an architecture this crate has no decoder for.
    #[error("`{path}`: unsupported architecture `{name}` (supported: {supported})")]
    UnknownArchitecture {
        /// The config file.
        path: PathBuf,
        /// `model_type`, or the first of `architectures`.
        name: String,
        /// The supported `model_type`s, comma-separated.
        supported: &'static str,
    },
    /// The config parses but its values cannot describe a model (e.g. heads not dividing the hidden size).
    #[error("`{path}`: invalid config: {message}")]
    InvalidConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the fields.
        message: String,
    },
    /// The directory holds no weights in a format we read.
    #[error("`{dir}`: no `model.safetensors` or `model.safetensors.index.json` found")]
    NoWeights {
        /// The model directory.
        dir: PathBuf,
    },
    /// A safetensors file is truncated or its header is not valid.
    #[error("`{path}`: not a valid safetensors file: {message}")]
    BadSafetensors {
        /// The weight file.
        path: PathBuf,
        /// What the reader said.
        message: String,
    },
    /// A GGUF file is truncated, or its header or a tensor cannot be read.
    #[error("`{path}`: not a valid GGUF file: {message}")]
    BadGguf {
        /// The GGUF file.
        path: PathBuf,
        /// What the reader said.
        message: String,
    },
    /// The model needs a tensor that no weight file holds.
    #[error("tensor `{tensor}` is missing from {files}")]
    MissingTensor {
        /// The tensor name (HF layout).
        tensor: String,
        /// The files that were searched, for the message.
        files: String,
    },
    /// A tensor exists but its shape does not match the config.
    #[error("`{path}`: tensor `{tensor}` has shape {found:?}, the config implies {expected:?}")]
    WrongShape {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype we cannot convert to a float model dtype (e.g. an integer tensor).
    #[error("`{path}`: tensor `{tensor}` has dtype {dtype}, which is not a float dtype")]
    WrongDtype {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// Any other tensor-library failure while loading (out of memory, device errors).
    #[error("{context}: {source}")]
    Candle {
        /// What was being done.
        context: String,
        /// candle's error.
        source: candle_core::Error,
    },
}

impl LoadError {
    /// Wraps a candle error with what was being done, for the message.
    pub(crate) fn candle(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let context = context.into();
        move |source| Self::Candle { context, source }
    }
}
