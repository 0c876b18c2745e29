//! The strategy table: what happens to each tensor (quantized at which bits, group and scheme,
//! or kept as it is), from the configuration and the modality. The quantization plan joins it to
//! the weights table, so `quantize` takes its settings per row.

use std::sync::Arc;

use arrowquant_udfs::kernels::scheme::QuantSpec;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt8Array, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};

use super::modality::Modality;
use crate::config::QuantConfig;
use crate::model::{Model, ModelTensor, is_float, row_layout};

/// Settings of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    pub layer: String,
    /// `None`: kept as stored. The fallback goes up [`QuantSpec::wider`].
    pub setting: Option<QuantSpec>,
    pub reason: String,
    /// The setting it was first given, when quality fell short and it was redone.
    pub fallback_from: Option<String>,
}

/// Embeddings and the layers every sample passes first and last: quantization error there
/// reaches the whole output, so lower-bit profiles give them more bits.
pub(super) fn sensitivity(layer: &str, modality: Modality) -> Option<&'static str> {
    let name = layer.to_ascii_lowercase();
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
pub fn plan(model: &Model, config: &QuantConfig, modality: Modality) -> Result<Vec<TensorPlan>> {
    let spec = config
        .spec()
        .map_err(|e| DataFusionError::Plan(e.to_string()))?;
    let sensitive = if config.sensitive_bit_width > spec.bits {
        let wide = spec
            .at_width(config.sensitive_bit_width)
            .map_err(|e| DataFusionError::Plan(format!("sensitive_bit_width: {e}")))?;
        Some(wide)
    } else {
        None
    };
    Ok(model
        .tensors
        .iter()
        .map(|t| plan_tensor(t, spec, sensitive, modality))
        .collect())
}

fn plan_tensor(
    t: &ModelTensor,
    spec: QuantSpec,
    sensitive: Option<QuantSpec>,
    modality: Modality,
) -> TensorPlan {
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
    let mut setting = spec;
    let mut reason = "weight".to_string();
    if let (Some(why), Some(wide)) = (sensitivity(&t.layer, modality), sensitive) {
        reason = format!("{why}: {} bits", wide.bits);
        setting = wide;
    }
    let for_row = setting.for_row(row_len);
    if for_row != setting {
        reason = format!(
            "{reason}; rows of {row_len} values are not whole {} blocks: {}",
            setting.scheme, for_row.scheme
        );
        setting = for_row;
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
    let setting = |f: fn(&QuantSpec) -> String| {
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
        Arc::new(setting(|s| s.group.to_string())),
        Arc::new(setting(|s| s.scheme.to_string())),
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
