//! Errors reading a model or a file: each names the file, and the tensor where there is one.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: no such file or directory")]
    NotFound { path: PathBuf },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: not a regular file ({kind})")]
    NotRegular { path: PathBuf, kind: &'static str },

    #[error("{path}: not a readable Parquet file: {reason}")]
    NotParquet { path: PathBuf, reason: String },

    #[error("{path}: not a safetensors file: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },

    #[error("{path}: not a GGUF file: {reason}")]
    NotGguf { path: PathBuf, reason: String },

    #[error("{path}: metadata key '{key}': {reason}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        reason: String,
    },

    #[error("{path}: tensor '{tensor}': {reason}")]
    BadTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    #[error("{path}: bad shard index: {reason}")]
    BadIndex { path: PathBuf, reason: String },

    #[error("{path}: bad pipeline index: {reason}")]
    BadPipeline { path: PathBuf, reason: String },

    #[error("{path}: bad JSON: {reason}")]
    BadJson { path: PathBuf, reason: String },

    #[error("{path}: nothing to quantize: {reason}")]
    Empty { path: PathBuf, reason: String },

    #[error("tensor '{tensor}' appears twice (in {first} and {second})")]
    Duplicate {
        tensor: String,
        first: PathBuf,
        second: PathBuf,
    },
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::NotFound { path }
        } else {
            ModelError::Io { path, source }
        }
    }
}
