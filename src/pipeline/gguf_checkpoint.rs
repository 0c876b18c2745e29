//! The metadata of a GGUF file written from checkpoints (safetensors files, sharded checkpoints,
//! model and pipeline folders), which carry none of llama.cpp's keys themselves.

use crate::model::Model;
use crate::model::gguf_write::MetaValue;

/// `general.name` from the model's folder or file name.
pub fn checkpoint_metadata(model: &Model) -> Vec<(String, MetaValue)> {
    let name = model
        .root
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    vec![("general.name".into(), MetaValue::String(name))]
}
