//! `--recipe Q4_K_M` (and llama.cpp's other file types): each tensor llama.cpp quantizes gets
//! the type llama-quantize's own rules give it ([`recipes`](super::recipes)), then its row's
//! fallback, as llama-quantize writes the file. Overrides (`--tensor-type`) come first.

use datafusion::common::{DataFusionError, Result};

use super::gguf_output::{InputTensor, Planned, Storage, block_spec, row_storage};
use super::recipes::{ModelParams, Recipe, assign};
use crate::model::gguf_write::MetaValue;

/// A whole-number metadata value, typed or as copied from another file.
fn number(value: &MetaValue) -> Option<u32> {
    use crate::model::gguf_file::ValueType;
    match value {
        MetaValue::U8(v) => Some(u32::from(*v)),
        MetaValue::U16(v) => Some(u32::from(*v)),
        MetaValue::U32(v) => Some(*v),
        MetaValue::I32(v) => u32::try_from(*v).ok(),
        MetaValue::U64(v) => u32::try_from(*v).ok(),
        MetaValue::I64(v) => u32::try_from(*v).ok(),
        // A per-layer array: llama.cpp's rules read its first layer.
        MetaValue::Array(_, items) => items.first().and_then(number),
        MetaValue::Raw(ValueType::U32, b) | MetaValue::Raw(ValueType::I32, b) if b.len() == 4 => {
            u32::try_from(i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))).ok()
        }
        MetaValue::Raw(ValueType::U64, b) | MetaValue::Raw(ValueType::I64, b) if b.len() == 8 => {
            u32::try_from(u64::from_le_bytes(b[..8].try_into().ok()?)).ok()
        }
        _ => None,
    }
}

/// A string metadata value, typed or as copied (a u64 length, then the bytes).
fn text(value: &MetaValue) -> Option<String> {
    use crate::model::gguf_file::ValueType;
    match value {
        MetaValue::String(s) => Some(s.clone()),
        MetaValue::Raw(ValueType::String, b) if b.len() >= 8 => {
            let len = usize::try_from(u64::from_le_bytes(b[..8].try_into().ok()?)).ok()?;
            std::str::from_utf8(b.get(8..8usize.checked_add(len)?)?)
                .ok()
                .map(str::to_string)
        }
        _ => None,
    }
}

/// The architecture and the hyper-parameters the rules read, from the output's metadata.
pub(super) fn model_params(metadata: &[(String, MetaValue)]) -> (String, ModelParams) {
    let find = |key: &str| metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let arch = find("general.architecture")
        .and_then(text)
        .unwrap_or_default();
    let key = |suffix: &str| find(&format!("{arch}.{suffix}")).and_then(number);
    let params = ModelParams {
        n_layer: key("block_count"),
        n_head: key("attention.head_count"),
        n_head_kv: key("attention.head_count_kv"),
        n_expert: key("expert_count"),
    };
    (arch, params)
}

/// Gives every tensor llama.cpp quantizes, that no override fixed, its recipe type (with an
/// importance matrix, `imatrix`, llama.cpp's rules differ in places).
#[allow(clippy::too_many_arguments)]
pub(super) fn apply_recipe(
    recipe: Recipe,
    metadata: &[(String, MetaValue)],
    tensors: &[InputTensor],
    names: &[String],
    plans: &mut [Planned],
    fixed: &[bool],
    comfy: bool,
    imatrix: bool,
) -> Result<()> {
    let (arch, params) = model_params(metadata);
    let dims: Vec<Vec<u64>> = tensors
        .iter()
        .zip(plans.iter())
        .map(|(t, p)| p.dims(t))
        .collect();
    let list: Vec<(&str, &[u64])> = names
        .iter()
        .zip(&dims)
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let assigned = assign(recipe, &arch, &params, imatrix, &list)
        .map_err(|e| DataFusionError::Plan(e.to_string()))?;
    for a in assigned {
        let p = &mut plans[a.index];
        // Already-quantized and integer tensors stay as they are, as for a single scheme.
        if fixed[a.index] || !matches!(p.storage, Storage::Blocks(_)) {
            continue;
        }
        let spec = block_spec(a.scheme).map_err(DataFusionError::Plan)?;
        let ne0 = dims[a.index][0] as usize;
        let (storage, ty, why) = row_storage(spec, ne0, comfy)?;
        p.storage = storage;
        p.ggml_type = ty;
        p.reason = match (a.reason, why) {
            (Some(r), Some(w)) => format!("{r}; {w}"),
            (Some(r), None) => r,
            (None, Some(w)) => format!("{recipe}; {w}"),
            (None, None) => recipe.to_string(),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf_file::ValueType;

    #[test]
    fn parameters_are_read_typed_or_as_copied() {
        let raw_text = |s: &str| {
            let mut b = (s.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(s.as_bytes());
            MetaValue::Raw(ValueType::String, b)
        };
        let metadata = vec![
            ("general.architecture".to_string(), raw_text("llama")),
            (
                "llama.block_count".to_string(),
                MetaValue::Raw(ValueType::U32, 32u32.to_le_bytes().to_vec()),
            ),
            ("llama.attention.head_count".to_string(), MetaValue::U32(32)),
            (
                "llama.attention.head_count_kv".to_string(),
                MetaValue::Array(ValueType::U32, vec![MetaValue::U32(8), MetaValue::U32(8)]),
            ),
        ];
        let (arch, params) = model_params(&metadata);
        assert_eq!(arch, "llama");
        assert_eq!(
            params,
            ModelParams {
                n_layer: Some(32),
                n_head: Some(32),
                n_head_kv: Some(8),
                n_expert: None
            }
        );
    }
}
