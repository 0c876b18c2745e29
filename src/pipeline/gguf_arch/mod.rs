//! Architectures whose checkpoints ArrowQuant writes as GGUF files their runtime loads: the
//! metadata keys, the tokenizer and the tensor names of each, read from the model folder.
//!
//! - [`bert`]: Hugging Face BERT encoders (`BertModel`, sentence-transformers folders) for
//!   llama.cpp, as its converter writes them.
//! - [`diffusion`]: diffusers components, the `general.architecture` key ComfyUI-GGUF reads.

pub mod bert;
mod bert_names;
pub mod diffusion;

use std::path::{Path, PathBuf};

use datafusion::common::{DataFusionError, Result};

use crate::model::gguf_write::MetaValue;
use crate::model::input::read_text;

/// What a known architecture makes of a checkpoint.
#[derive(Debug, Clone)]
pub struct ArchLayout {
    /// `general.architecture`.
    pub architecture: String,
    /// Every key, `general.architecture` first (before `general.file_type` and `quantize.*`).
    pub metadata: Vec<(String, MetaValue)>,
    /// Per tensor of the model, in its order: its name in the file, or `None` when left out.
    pub names: Vec<Option<String>>,
    /// The tensors left out and why.
    pub dropped: Vec<(String, String)>,
    /// Files read besides the model's own (vocabularies, pooling configurations): the output
    /// must never replace them either.
    pub read: Vec<PathBuf>,
    /// Which runtime loads the file, for the run's summary.
    pub note: String,
}

/// The largest vocabulary or tokenizer file read.
const MAX_TEXT: u64 = 200_000_000;

fn plan_error(message: String) -> DataFusionError {
    DataFusionError::Plan(message)
}

/// A text file of the model folder, its errors naming it.
fn read_file(path: &Path) -> Result<String> {
    read_text(path, MAX_TEXT).map_err(|e| plan_error(e.to_string()))
}

/// A JSON file of the model folder, its errors naming it.
fn read_json(path: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(&read_file(path)?)
        .map_err(|e| plan_error(format!("{}: {e}", path.display())))
}

fn string(key: &str, value: &str) -> (String, MetaValue) {
    (key.to_string(), MetaValue::String(value.to_string()))
}

fn u32_key(key: &str, value: u32) -> (String, MetaValue) {
    (key.to_string(), MetaValue::U32(value))
}

fn bool_key(key: &str, value: bool) -> (String, MetaValue) {
    (key.to_string(), MetaValue::Bool(value))
}
