//! The metadata and tensor names of a GGUF file written from checkpoints (safetensors files,
//! sharded checkpoints, model and pipeline folders), which carry none of llama.cpp's keys
//! themselves: a known architecture's ([`gguf_arch`](super::gguf_arch)), read from the model
//! folder, or else `general.name` and the checkpoint's own names, which no runtime loads.

use datafusion::common::Result;

use datafusion::common::DataFusionError;

use super::gguf_arch::{ArchLayout, bert, diffusion, llama, sd_cpp};
use crate::config::GgufTarget;
use crate::model::Model;
use crate::model::gguf_write::MetaValue;

/// `general.name` from the model's folder or file name.
pub fn model_name(model: &Model) -> String {
    model
        .root
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// `general.name` only.
pub fn checkpoint_metadata(model: &Model) -> Vec<(String, MetaValue)> {
    vec![("general.name".into(), MetaValue::String(model_name(model)))]
}

/// What the file holds for `model`: a known architecture's keys and names, or the checkpoint's
/// names under `general.name` (an error only when an architecture is recognised but its folder
/// lacks what its runtime needs). A UNet is written for `target`'s runtime; `sd.cpp` is refused
/// for anything else.
pub fn checkpoint_layout(model: &Model, target: GgufTarget) -> Result<ArchLayout> {
    let name = model_name(model);
    if let Some(config) = bert::config(model) {
        return bert::layout(model, config, &name);
    }
    if let Some(config) = llama::config(model) {
        return llama::layout(model, config, &name);
    }
    if let Some(layout) = diffusion::layout(model, &name) {
        return match target {
            GgufTarget::ComfyUi => Ok(layout),
            GgufTarget::SdCpp => sd_cpp::layout(model, layout),
        };
    }
    if target == GgufTarget::SdCpp {
        return Err(DataFusionError::Plan(format!(
            "{}: gguf_target sd.cpp: not an SD1/SDXL UNet (a single UNet, diffusers or original \
             names), the only models written in stable-diffusion.cpp's form",
            model.root.display()
        )));
    }
    Ok(ArchLayout {
        architecture: String::new(),
        metadata: checkpoint_metadata(model),
        names: model
            .tensors
            .iter()
            .map(|t| Some(t.layer.clone()))
            .collect(),
        dropped: Vec::new(),
        read: Vec::new(),
        reordered: Default::default(),
        note: "GGUF without architecture keys: tensors under their checkpoint names and \
               general.name only, which llama.cpp will not load"
            .into(),
    })
}
