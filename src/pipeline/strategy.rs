//! The strategy table: what happens to each tensor (quantized at which bits, group and scheme,
//! or kept as it is), from the configuration and the modality. The quantization plan joins it to
//! the weights table, so `quantize` takes its settings per row.

use std::sync::Arc;

use arrowquant_udfs::kernels::scheme::Scheme;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt8Array, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Result;

use super::modality::Modality;
use crate::config::QuantConfig;
use crate::model::{Model, ModelTensor, is_float, row_layout};

/// Settings of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    pub layer: String,
    /// `None`: kept as stored.
    pub setting: Option<Setting>,
    pub reason: String,
    /// The setting it was first given, when quality fell short and it was redone.
    pub fallback_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub bits: u8,
    pub group_size: String,
    pub scheme: String,
}

impl Setting {
    /// The next wider setting, for tensors whose quality falls short; `None` at the widest
    /// (the tensor is then kept as stored).
    pub fn wider(&self) -> Option<Setting> {
        let scheme = Scheme::parse(&self.scheme).ok()?;
        let (bits, scheme) = match scheme.gguf() {
            Some(_) => match self.scheme.as_str() {
                "q4_0" => (5, "q5_0"),
                "q4_1" => (5, "q5_1"),
                "q5_0" | "q5_1" => (8, "q8_0"),
                _ => return None,
            },
            None => match self.bits {
                // Affine schemes keep their group size and go 2 → 4 → 8 bits.
                2 | 3 => (4, self.scheme.as_str()),
                4..=6 => (8, self.scheme.as_str()),
                _ => return None,
            },
        };
        Some(Setting {
            bits,
            group_size: self.group_size.clone(),
            scheme: scheme.to_string(),
        })
    }

    /// `4-bit asym g64`, for reports.
    pub fn describe(&self) -> String {
        format!("{}-bit {} g{}", self.bits, self.scheme, self.group_size)
    }
}

/// Embeddings and the layers every sample passes first and last: quantization error there
/// reaches the whole output, so lower-bit profiles give them more bits.
fn sensitivity(t: &ModelTensor, modality: Modality) -> Option<&'static str> {
    let name = t.layer.to_ascii_lowercase();
    if name.contains("time_embed") || name.contains("timestep_embed") || name.contains("temb") {
        return Some("time embedding");
    }
    if name.contains("embed") || name.contains("wte.") || name.contains("wpe.") {
        return Some("embedding");
    }
    if name.contains("lm_head") {
        return Some("output head");
    }
    if modality == Modality::Image {
        let leaf = name
            .rsplit_once('.')
            .map_or(name.as_str(), |(stem, _)| stem);
        if leaf.ends_with("conv_in") {
            return Some("first convolution");
        }
        if leaf.ends_with("conv_out") {
            return Some("last convolution");
        }
    }
    None
}

/// Plans every tensor of a model.
pub fn plan(model: &Model, config: &QuantConfig, modality: Modality) -> Vec<TensorPlan> {
    model
        .tensors
        .iter()
        .map(|t| plan_tensor(t, config, modality))
        .collect()
}

fn plan_tensor(t: &ModelTensor, config: &QuantConfig, modality: Modality) -> TensorPlan {
    let keep = |reason: &str| TensorPlan {
        layer: t.layer.clone(),
        setting: None,
        reason: reason.to_string(),
        fallback_from: None,
    };
    if !is_float(t.meta.dtype) {
        return keep("not a float tensor");
    }
    if t.meta.elements() == 0 {
        return keep("empty");
    }
    if t.meta.shape.len() <= 1 {
        return keep("1-D (bias, norm or scale)");
    }
    let (_, row_len) = row_layout(&t.meta.shape);
    let mut setting = Setting {
        bits: config.bit_width,
        group_size: config.group_size.clone(),
        scheme: config.scheme.clone(),
    };
    let mut reason = "weight".to_string();
    if let Some(why) = sensitivity(t, modality)
        && config.sensitive_bit_width > config.bit_width
    {
        reason = format!("{why}: {} bits", config.sensitive_bit_width);
        setting.bits = config.sensitive_bit_width;
        if Scheme::parse(&setting.scheme).is_ok_and(|s| s.gguf().is_some()) {
            setting.scheme = "q8_0".into();
            setting.bits = 8;
        }
    }
    // GGUF blocks hold 32 values: rows of other lengths take the affine scheme at the same width.
    let is_gguf = Scheme::parse(&setting.scheme).is_ok_and(|s| s.gguf().is_some());
    if is_gguf && row_len % 32 != 0 {
        reason = format!("{reason}; rows of {row_len} values are not whole GGUF blocks: asym");
        setting.scheme = "asym".into();
        setting.group_size = "32".into();
    }
    if Scheme::parse(&setting.scheme).is_ok_and(|s| s.gguf().is_some()) {
        // GGUF blocks are 32 values whatever the configured group.
        setting.group_size = "32".into();
    }
    TensorPlan {
        layer: t.layer.clone(),
        setting: Some(setting),
        reason,
        fallback_from: None,
    }
}

pub fn strategy_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("layer", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("bits", DataType::UInt8, true),
        Field::new("group_size", DataType::Utf8, true),
        Field::new("scheme", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("fallback_from", DataType::Utf8, true),
        Field::new("position", DataType::UInt32, false),
    ]))
}

/// The strategy as a table.
pub fn strategy_batch(plans: &[TensorPlan]) -> Result<RecordBatch> {
    let setting = |f: fn(&Setting) -> String| {
        StringArray::from_iter(plans.iter().map(|p| p.setting.as_ref().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            plans.iter().map(|p| p.layer.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(plans.iter().map(|p| {
            if p.setting.is_some() {
                "quantize"
            } else {
                "keep"
            }
        }))),
        Arc::new(UInt8Array::from_iter(
            plans.iter().map(|p| p.setting.as_ref().map(|s| s.bits)),
        )),
        Arc::new(setting(|s| s.group_size.clone())),
        Arc::new(setting(|s| s.scheme.clone())),
        Arc::new(StringArray::from_iter_values(
            plans.iter().map(|p| p.reason.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            plans.iter().map(|p| p.fallback_from.as_deref()),
        )),
        Arc::new(UInt32Array::from_iter_values(0..plans.len() as u32)),
    ];
    Ok(RecordBatch::try_new(strategy_schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_ladder() {
        let s = |bits, scheme: &str| Setting {
            bits,
            group_size: "64".into(),
            scheme: scheme.into(),
        };
        assert_eq!(s(2, "asym").wider(), Some(s(4, "asym")));
        assert_eq!(s(4, "sym").wider(), Some(s(8, "sym")));
        assert_eq!(s(8, "asym").wider(), None);
        assert_eq!(s(4, "q4_0").wider(), Some(s(5, "q5_0")));
        assert_eq!(s(5, "q5_1").wider(), Some(s(8, "q8_0")));
        assert_eq!(s(8, "q8_0").wider(), None);
    }
}
