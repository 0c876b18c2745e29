//! ArrowQuant: model-weight quantization as SQL on Apache DataFusion.
//!
//! This crate is the engine users run: a [`session`] with every function registered, and the
//! `arrowquant` command line. The SQL functions and their kernels live in `arrowquant-udfs`,
//! re-exported here as [`udfs`].

pub use arrowquant_udfs as udfs;

pub mod catalogue;
pub mod cli;
pub mod config;
pub mod guard;
/// Model files (safetensors, shards, model folders): the `arrowquant-formats` crate, which
/// parses them without DataFusion so that they are fuzzed on their own.
pub use arrowquant_formats as model;
pub mod pipeline;
pub mod root;
pub mod serve;
pub mod session;
pub mod tables;

/// `Model::open` for the engine: its error as DataFusion's, with the `ModelError` inside for
/// callers that look for a kind (`DataFusionError::External`, found by `downcast_ref`).
pub fn open_model(path: impl AsRef<std::path::Path>) -> datafusion::common::Result<model::Model> {
    model::Model::open(path).map_err(|e| datafusion::common::DataFusionError::External(Box::new(e)))
}

/// `GgufFile::open` for the engine, its error carried as [`open_model`]'s is.
pub fn open_gguf(
    path: impl AsRef<std::path::Path>,
) -> datafusion::common::Result<model::gguf_file::GgufFile> {
    model::gguf_file::GgufFile::open(path.as_ref())
        .map_err(|e| datafusion::common::DataFusionError::External(Box::new(e)))
}
