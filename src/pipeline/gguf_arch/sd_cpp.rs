//! SD1/SDXL UNets for stable-diffusion.cpp (`--gguf-target sd.cpp`): its loader
//! (`src/model_loader.cpp`) refuses a tensor whose shape is not the model's, so tensors keep
//! their original shapes (no ComfyUI-GGUF reshape, no `comfy.gguf.orig_shape.*`). Names are the
//! original (ldm) layout's under `model.diffusion_model.`, as sd.cpp's own `-M convert` writes a
//! checkpoint's UNet: `--diffusion-model FILE` keeps that prefix, and sd.cpp tells a UNet (and
//! SD1 from SDXL) by `model.diffusion_model.input_blocks.` names, which diffusers names under
//! the prefix would not have. Diffusers names are converted as diffusers'
//! `convert_diffusers_to_original_stable_diffusion.py` maps them (blocks numbered from the
//! folder's own layers per block).
//!
//! Left unquantized, as sd.cpp's converter leaves them (`tensor_should_be_converted`): biases,
//! `.scale` tensors, the time and label embeddings (`time_embed.`, `label_emb.`, any name with
//! `embedding`), and tensors whose ggml rows are not the scheme's blocks; 4-D convolutions,
//! whose rows are kernel widths, among them. Rows of 2-D weights the blocks do not divide are
//! written in F16.

use std::collections::HashSet;

use datafusion::common::{DataFusionError, Result};

use super::ArchLayout;
use crate::model::Model;
use crate::pipeline::gguf_select::ggml_dims;

/// The prefix sd.cpp gives a diffusion model's tensors.
pub const PREFIX: &str = "model.diffusion_model.";

/// Whole diffusers names and their original ones (SDXL's label embedding included).
const WHOLE: &[(&str, &str)] = &[
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("add_embedding.linear_1.", "label_emb.0.0."),
    ("add_embedding.linear_2.", "label_emb.0.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
];

/// A diffusers resnet's modules and the original ResBlock's.
const RESNET: &[(&str, &str)] = &[
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
];

/// Name parts sd.cpp's converter never quantizes.
const KEPT_PARTS: &[&str] = &["time_embed.", "label_emb.", "embedding"];
const KEPT_SUFFIXES: &[&str] = &[".bias", ".scale", ".weight_scale"];

/// The ComfyUI-GGUF layout of a UNet (`diffusion::layout`) rewritten for sd.cpp: names under
/// [`PREFIX`] in the original layout.
pub fn layout(model: &Model, mut layout: ArchLayout) -> Result<ArchLayout> {
    let names = Unet::of(model);
    let mut seen = HashSet::new();
    for (t, name) in model.tensors.iter().zip(layout.names.iter_mut()) {
        let Some(n) = name.as_mut() else { continue };
        *n = format!("{PREFIX}{}", names.original(&t.layer));
        if !seen.insert(n.clone()) {
            return Err(DataFusionError::Plan(format!(
                "UNet checkpoint: two tensors are both stable-diffusion.cpp's '{n}' (the last \
                 is '{}')",
                t.layer
            )));
        }
    }
    layout.note = format!(
        "GGUF for stable-diffusion.cpp (--diffusion-model): {} UNet, original names under \
         {PREFIX}, original shapes",
        layout.architecture
    );
    Ok(layout)
}

/// Why sd.cpp's converter leaves a tensor unquantized beyond llama.cpp's own rules, `None`
/// when it quantizes it (`dims` innermost first).
pub fn kept(name: &str, dims: &[u64]) -> Option<String> {
    if let Some(s) = KEPT_SUFFIXES.iter().find(|s| name.ends_with(**s)) {
        return Some(format!(
            "stable-diffusion.cpp keeps {s} tensors unquantized"
        ));
    }
    if let Some(p) = KEPT_PARTS.iter().find(|p| name.contains(**p)) {
        return Some(format!(
            "stable-diffusion.cpp keeps {} tensors unquantized",
            p.trim_end_matches('.')
        ));
    }
    let n = ggml_dims(dims);
    (n != 2).then(|| {
        format!(
            "{n}-D: rows of {} values (a kernel width), which stable-diffusion.cpp does not \
             quantize",
            dims[0]
        )
    })
}

/// A diffusers UNet's layout, which the original block numbers depend on.
struct Unet {
    /// Resnets per down block (the original UNet has one more up block resnet).
    layers: usize,
    /// The up blocks with attentions (their upsampler is the third module of the block).
    up_attentions: HashSet<usize>,
}

impl Unet {
    fn of(model: &Model) -> Unet {
        let index = |name: &str, prefix: &str| -> Option<usize> {
            name.strip_prefix(prefix)?.split('.').next()?.parse().ok()
        };
        let layers = model
            .tensors
            .iter()
            .filter_map(|t| index(&t.layer, "down_blocks.0.resnets."))
            .max()
            .map_or(2, |n| n + 1);
        let up_attentions = model
            .tensors
            .iter()
            .filter(|t| t.layer.contains(".attentions."))
            .filter_map(|t| index(&t.layer, "up_blocks."))
            .collect();
        Unet {
            layers,
            up_attentions,
        }
    }

    /// The original layout's name of `name` (already original names are kept).
    fn original(&self, name: &str) -> String {
        if let Some((from, to)) = WHOLE.iter().find(|(from, _)| name.starts_with(from)) {
            return format!("{to}{}", &name[from.len()..]);
        }
        let step = self.layers + 1;
        let split = |rest: &str| -> Option<(usize, String)> {
            let (n, tail) = rest.split_once('.')?;
            Some((n.parse().ok()?, tail.to_string()))
        };
        let resnet = |tail: &str| -> String {
            let (module, rest) = tail.split_once('.').unwrap_or((tail, ""));
            let module = RESNET
                .iter()
                .find(|(from, _)| *from == module)
                .map_or(module, |(_, to)| to);
            if rest.is_empty() {
                module.to_string()
            } else {
                format!("{module}.{rest}")
            }
        };
        let mapped = (|| -> Option<String> {
            if let Some(rest) = name.strip_prefix("down_blocks.") {
                let (i, rest) = split(rest)?;
                if let Some(r) = rest.strip_prefix("resnets.") {
                    let (j, tail) = split(r)?;
                    return Some(format!(
                        "input_blocks.{}.0.{}",
                        step * i + j + 1,
                        resnet(&tail)
                    ));
                }
                if let Some(r) = rest.strip_prefix("attentions.") {
                    let (j, tail) = split(r)?;
                    return Some(format!("input_blocks.{}.1.{tail}", step * i + j + 1));
                }
                let tail = rest.strip_prefix("downsamplers.0.conv.")?;
                return Some(format!("input_blocks.{}.0.op.{tail}", step * (i + 1)));
            }
            if let Some(rest) = name.strip_prefix("up_blocks.") {
                let (i, rest) = split(rest)?;
                if let Some(r) = rest.strip_prefix("resnets.") {
                    let (j, tail) = split(r)?;
                    return Some(format!(
                        "output_blocks.{}.0.{}",
                        step * i + j,
                        resnet(&tail)
                    ));
                }
                if let Some(r) = rest.strip_prefix("attentions.") {
                    let (j, tail) = split(r)?;
                    return Some(format!("output_blocks.{}.1.{tail}", step * i + j));
                }
                let tail = rest.strip_prefix("upsamplers.0.")?;
                let k = if self.up_attentions.contains(&i) {
                    2
                } else {
                    1
                };
                return Some(format!(
                    "output_blocks.{}.{k}.{tail}",
                    step * i + self.layers
                ));
            }
            let rest = name.strip_prefix("mid_block.")?;
            if let Some(tail) = rest.strip_prefix("attentions.0.") {
                return Some(format!("middle_block.1.{tail}"));
            }
            let (j, tail) = split(rest.strip_prefix("resnets.")?)?;
            Some(format!("middle_block.{}.{}", 2 * j, resnet(&tail)))
        })();
        mapped.unwrap_or_else(|| name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd1() -> Unet {
        Unet {
            layers: 2,
            up_attentions: [1, 2, 3].into(),
        }
    }

    #[test]
    fn diffusers_names_become_the_original_layouts() {
        let u = sd1();
        let cases = [
            ("conv_in.weight", "input_blocks.0.0.weight"),
            ("time_embedding.linear_2.bias", "time_embed.2.bias"),
            ("conv_norm_out.weight", "out.0.weight"),
            (
                "down_blocks.0.resnets.1.conv1.weight",
                "input_blocks.2.0.in_layers.2.weight",
            ),
            (
                "down_blocks.1.attentions.0.proj_in.weight",
                "input_blocks.4.1.proj_in.weight",
            ),
            (
                "down_blocks.2.downsamplers.0.conv.bias",
                "input_blocks.9.0.op.bias",
            ),
            (
                "down_blocks.3.resnets.0.time_emb_proj.weight",
                "input_blocks.10.0.emb_layers.1.weight",
            ),
            (
                "up_blocks.0.resnets.2.conv_shortcut.weight",
                "output_blocks.2.0.skip_connection.weight",
            ),
            (
                "up_blocks.0.upsamplers.0.conv.weight",
                "output_blocks.2.1.conv.weight",
            ),
            (
                "up_blocks.1.upsamplers.0.conv.weight",
                "output_blocks.5.2.conv.weight",
            ),
            (
                "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_q.weight",
                "output_blocks.11.1.transformer_blocks.0.attn1.to_q.weight",
            ),
            (
                "mid_block.resnets.1.norm2.bias",
                "middle_block.2.out_layers.0.bias",
            ),
            (
                "mid_block.attentions.0.norm.weight",
                "middle_block.1.norm.weight",
            ),
            // Already original.
            (
                "input_blocks.1.0.in_layers.0.weight",
                "input_blocks.1.0.in_layers.0.weight",
            ),
        ];
        for (from, to) in cases {
            assert_eq!(u.original(from), to, "{from}");
        }
        // SDXL: its first up blocks have attentions, so their upsampler is the third module.
        let xl = Unet {
            layers: 2,
            up_attentions: [0, 1].into(),
        };
        assert_eq!(
            xl.original("up_blocks.0.upsamplers.0.conv.weight"),
            "output_blocks.2.2.conv.weight"
        );
        assert_eq!(
            xl.original("add_embedding.linear_1.weight"),
            "label_emb.0.0.weight"
        );
    }

    #[test]
    fn sd_cpp_keeps_what_its_converter_keeps() {
        assert!(kept("model.diffusion_model.out.2.bias", &[4]).is_some());
        assert!(kept("model.diffusion_model.time_embed.0.weight", &[320, 1280]).is_some());
        assert!(kept("model.diffusion_model.label_emb.0.0.weight", &[2816, 1280]).is_some());
        let conv = kept(
            "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
            &[3, 3, 320, 320],
        );
        assert!(conv.unwrap().starts_with("4-D: rows of 3 values"));
        assert_eq!(
            kept(
                "model.diffusion_model.input_blocks.1.1.proj_in.weight",
                &[320, 320]
            ),
            None
        );
    }
}
