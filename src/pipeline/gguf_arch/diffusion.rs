//! Diffusion components for ComfyUI-GGUF: `general.architecture` as its loader checks it
//! (city96/ComfyUI-GGUF `loader.py`, `IMG_ARCH_LIST`), detected from tensor names as its
//! converter does (`tools/convert.py`, `keys_detect`). Names stay the checkpoint's: ComfyUI
//! maps a diffusers UNet's names to its own when loading (`comfy.sd.load_diffusion_model_state_dict`),
//! and stable-diffusion.cpp converts diffusers names itself and ignores the key. Only UNets
//! (`sd1`, `sdxl`) so far: ComfyUI-GGUF refuses diffusers-layout Flux, SD3 and AuraFlow
//! transformers (their q/k/v are fused in the reference layout).

use super::{ArchLayout, string};
use crate::model::Model;

/// (architecture, tensors that must all be present), first match wins: SDXL before SD1,
/// diffusers names, then the original (ldm) ones.
const DETECT: &[(&str, &[&str])] = &[
    (
        "sdxl",
        &[
            "down_blocks.0.downsamplers.0.conv.weight",
            "add_embedding.linear_1.weight",
        ],
    ),
    (
        "sdxl",
        &[
            "input_blocks.3.0.op.weight",
            "input_blocks.6.0.op.weight",
            "output_blocks.2.2.conv.weight",
            "output_blocks.5.2.conv.weight",
        ],
    ),
    ("sdxl", &["label_emb.0.0.weight"]),
    ("sd1", &["down_blocks.0.downsamplers.0.conv.weight"]),
    (
        "sd1",
        &[
            "input_blocks.3.0.op.weight",
            "input_blocks.6.0.op.weight",
            "input_blocks.9.0.op.weight",
            "output_blocks.2.1.conv.weight",
            "output_blocks.5.2.conv.weight",
            "output_blocks.8.2.conv.weight",
        ],
    ),
];

/// A single UNet (a component folder or file, not a pipeline, whose names carry component
/// prefixes no loader strips) as ComfyUI-GGUF's `sd1` / `sdxl`.
pub fn layout(model: &Model, name: &str) -> Option<ArchLayout> {
    if model.root.join("model_index.json").exists() {
        return None;
    }
    let has = |n: &str| model.tensors.iter().any(|t| t.layer == n);
    let (arch, _) = DETECT
        .iter()
        .find(|(_, keys)| keys.iter().all(|k| has(k)))?;
    Some(ArchLayout {
        architecture: arch.to_string(),
        metadata: vec![
            string("general.architecture", arch),
            string("general.name", name),
        ],
        names: model
            .tensors
            .iter()
            .map(|t| Some(t.layer.clone()))
            .collect(),
        dropped: Vec::new(),
        read: Vec::new(),
        note: format!(
            "GGUF for ComfyUI-GGUF: architecture {arch}, checkpoint names (llama.cpp does not \
             load diffusion models)"
        ),
    })
}
