//! Diffusion components for ComfyUI-GGUF: `general.architecture` as its loader checks it
//! (city96/ComfyUI-GGUF `loader.py`, `IMG_ARCH_LIST`), detected from tensor names as its
//! converter does (`tools/convert.py`, `keys_detect`). Names stay the checkpoint's: ComfyUI
//! maps a diffusers UNet's names to its own when loading (`comfy.sd.load_diffusion_model_state_dict`),
//! and stable-diffusion.cpp converts diffusers names itself and ignores the key. Only UNets
//! (`sd1`, `sdxl`) so far: ComfyUI-GGUF refuses diffusers-layout Flux, SD3 and AuraFlow
//! transformers (their q/k/v are fused in the reference layout).
//!
//! A UNet's tensors are written as ComfyUI-GGUF's own files have them (its `tools/convert.py`
//! and the llama-quantize its `tools/lcpp.patch` makes, with or without `--pure`): [`reshaped`]
//! to rows of 256 where the innermost dimension is not a multiple of 256, the original shape in
//! [`orig_shape`]'s key; the [`kept`] tensors unquantized, in [`kept_type`]; rows no block
//! of the scheme divides in F16, the patch's fallback.

use datafusion::common::{DataFusionError, Result};

use super::{ArchLayout, string};
use crate::model::Model;
use crate::model::gguf_file::ValueType;
use crate::model::gguf_write::MetaValue;
use crate::pipeline::gguf_select::ggml_dims;

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
    let reshaped = model
        .tensors
        .iter()
        .filter(|t| reshaped(&t.meta.shape).is_some())
        .count();
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
        reordered: Default::default(),
        note: format!(
            "GGUF for ComfyUI-GGUF: architecture {arch}, checkpoint names, its keep list, \
             {reshaped} tensors reshaped to rows of {ROW} (comfy.gguf.orig_shape.*, which \
             stable-diffusion.cpp does not read; llama.cpp does not load diffusion models)"
        ),
    })
}

/// Whether a GGUF output of this architecture takes ComfyUI-GGUF's UNet rules ([`kept`],
/// [`reshaped`], [`kept_type`]): `sd1` and `sdxl`, the architectures its converter reshapes
/// (`shape_fix = True`) and its patched llama-quantize keeps the embeddings and the
/// convolutions in and out of.
pub fn is_comfy_unet(architecture: &str) -> bool {
    matches!(architecture, "sd1" | "sdxl")
}

/// The rows ComfyUI-GGUF's converter reshapes to.
pub const ROW: usize = 256;

/// convert.py's `REARRANGE_THRESHOLD`: fewer values are never reshaped.
const REARRANGE_THRESHOLD: usize = 512;

/// convert.py's `QUANTIZATION_THRESHOLD`: tensors of at most this many values are written in
/// F32 (from F32 and BF16 checkpoints).
const SMALL: usize = 1024;

/// Parts of names the patched llama-quantize (`tools/lcpp.patch`, `LLM_ARCH_SD1 ||
/// LLM_ARCH_SDXL`) never quantizes: diffusers' and the original layout's embeddings and the
/// convolutions in and out.
const KEPT_PARTS: &[&str] = &[
    "class_embedding.",
    "time_embedding.",
    "add_embedding.",
    "time_embed.",
    "label_emb.",
    "conv_in.",
    "conv_out.",
];

/// Whole names it never quantizes: the original layout's convolutions in and out.
const KEPT_NAMES: &[&str] = &["input_blocks.0.0.weight", "out.2.weight"];

/// The shape (outermost first) ComfyUI-GGUF's converter (`tools/convert.py`, `shape_fix`)
/// gives a tensor of `shape`: `[n / 256, 256]` when it has more than one dimension, at least
/// 512 values, a count 256 divides and an innermost dimension 256 does not; `None` otherwise.
/// Its loader reads the original shape back from `comfy.gguf.orig_shape.NAME` ([`orig_shape`]).
pub fn reshaped(shape: &[usize]) -> Option<[usize; 2]> {
    let n: usize = shape.iter().product();
    let last = *shape.last()?;
    (shape.len() > 1
        && n >= REARRANGE_THRESHOLD
        && n.is_multiple_of(ROW)
        && !last.is_multiple_of(ROW))
    .then_some([n / ROW, ROW])
}

/// `comfy.gguf.orig_shape.NAME`: the shape before [`reshaped`], outermost first (torch's
/// order, which the loader's `torch.Size` takes as it is), an array of INT32 as gguf-py writes
/// a tuple of ints and the loader requires.
pub fn orig_shape(name: &str, shape: &[usize]) -> Result<(String, MetaValue)> {
    let dims = shape
        .iter()
        .map(|&d| {
            i32::try_from(d).map(MetaValue::I32).map_err(|_| {
                DataFusionError::Plan(format!(
                    "tensor '{name}': dimension {d} does not fit comfy.gguf.orig_shape's INT32"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((
        format!("comfy.gguf.orig_shape.{name}"),
        MetaValue::Array(ValueType::I32, dims),
    ))
}

/// Why the patched llama-quantize leaves a tensor of a UNet unquantized beyond llama.cpp's own
/// rules: its name list, or a tensor that is not 2-D in the file (`dims`, innermost first,
/// after [`reshaped`]: the convolutions it could not reshape). `None` when it quantizes it.
pub fn kept(name: &str, dims: &[u64]) -> Option<String> {
    if let Some(part) = KEPT_NAMES
        .iter()
        .find(|n| **n == name)
        .or_else(|| KEPT_PARTS.iter().find(|p| name.contains(**p)))
    {
        return Some(format!(
            "ComfyUI-GGUF keeps {} tensors unquantized",
            part.trim_end_matches('.')
        ));
    }
    let n = ggml_dims(dims);
    (n != 2).then(|| {
        format!(
            "{n}-D in the file: ComfyUI-GGUF's llama-quantize quantizes only 2-D tensors of \
             image models"
        )
    })
}

/// The type ComfyUI-GGUF's converter writes an unquantized tensor in, from the checkpoint's
/// dtype (`dtype_name`'s spelling) and shape: F32 for 1-D tensors and tensors of at most 1024
/// values from F32 and BF16 checkpoints, BF16 for the other BF16 tensors, F16 for everything
/// else (F16 tensors, 1-D ones included, stay F16).
pub fn kept_type(dtype: &str, shape: &[usize]) -> &'static str {
    let n: usize = shape.iter().product();
    match dtype {
        "F32" | "BF16" if shape.len() <= 1 || n <= SMALL => "F32",
        "BF16" => "BF16",
        _ => "F16",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_are_reshaped_by_convert_pys_rule() {
        assert_eq!(reshaped(&[320, 4, 3, 3]), Some([45, 256]));
        assert_eq!(reshaped(&[64, 32, 1, 1]), Some([8, 256]));
        assert_eq!(reshaped(&[320, 320]), Some([400, 256]));
        // The innermost dimension already takes rows of 256.
        assert_eq!(reshaped(&[1280, 1280]), None);
        assert_eq!(reshaped(&[2, 512]), None);
        // 256 does not divide the count, fewer than 512 values, or 1-D.
        assert_eq!(reshaped(&[10, 12, 3, 3]), None);
        assert_eq!(reshaped(&[2, 128, 1, 1]), None);
        assert_eq!(reshaped(&[1024]), None);
        assert_eq!(reshaped(&[]), None);
    }

    #[test]
    fn the_keep_list_and_the_dimension_rule_keep_tensors() {
        for name in [
            "conv_in.weight",
            "conv_out.weight",
            "time_embedding.linear_1.weight",
            "add_embedding.linear_2.weight",
            "class_embedding.weight",
            "time_embed.0.weight",
            "label_emb.0.0.weight",
            "input_blocks.0.0.weight",
            "out.2.weight",
        ] {
            assert!(kept(name, &[256, 16]).is_some(), "{name}");
        }
        assert_eq!(
            kept("down_blocks.0.resnets.0.conv1.weight", &[256, 36]),
            None
        );
        assert_eq!(kept("output_blocks.0.out.2.weight", &[256, 36]), None);
        let conv = kept("down_blocks.0.resnets.0.conv1.weight", &[3, 3, 12, 10]);
        assert!(conv.unwrap().starts_with("4-D"));
    }

    #[test]
    fn kept_tensors_take_convert_pys_types() {
        assert_eq!(kept_type("F32", &[320]), "F32");
        assert_eq!(kept_type("F32", &[4, 256]), "F32");
        assert_eq!(kept_type("F32", &[1280, 320]), "F16");
        assert_eq!(kept_type("BF16", &[1280]), "F32");
        assert_eq!(kept_type("BF16", &[1280, 320]), "BF16");
        assert_eq!(kept_type("F16", &[1280]), "F16");
        assert_eq!(kept_type("F64", &[1280, 320]), "F16");
    }

    #[test]
    fn the_original_shape_is_an_int32_array_outermost_first() {
        let (key, value) = orig_shape("conv.weight", &[320, 4, 3, 3]).unwrap();
        assert_eq!(key, "comfy.gguf.orig_shape.conv.weight");
        let MetaValue::Array(ValueType::I32, dims) = value else {
            panic!("{value:?}")
        };
        assert_eq!(dims.len(), 4);
        assert!(matches!(dims[0], MetaValue::I32(320)));
        assert!(matches!(dims[3], MetaValue::I32(3)));
    }
}
