//! The metadata of a GGUF output: the input's keys carried over as they are encoded, the file
//! type llama.cpp reads (`general.file_type`, its `llama_ftype`), and where the file came from
//! (`quantize.*`).

use datafusion::common::{DataFusionError, Result};

use crate::model::gguf_file::{GgmlType, GgufFile, ValueType};
use crate::model::gguf_write::MetaValue;

/// `general.file_type`: what llama.cpp's loader reports as the model's type.
pub const FILE_TYPE: &str = "general.file_type";
/// `general.quantization_version`: the version of the block formats (ggml's
/// `GGML_QNT_VERSION`, 2 since the formats of May 2023), which llama-quantize always writes.
pub const QUANTIZATION_VERSION: &str = "general.quantization_version";
pub const GGML_QNT_VERSION: u32 = 2;
/// Keys this run writes itself, so never copied from an earlier run's output.
const PROVENANCE_PREFIX: &str = "quantize.";

/// llama.cpp's `llama_ftype` (include/llama.h) for a file whose quantized tensors are mostly of
/// `base`. A k-quant's file type is its smallest mixture (`_S`): ArrowQuant's mixtures widen
/// only the few sensitive tensors, and `--pure` widens none.
pub fn llama_ftype(base: GgmlType) -> Option<u32> {
    Some(match base.name {
        "F32" => 0,
        "F16" => 1,
        "Q4_0" => 2,
        "Q4_1" => 3,
        "Q8_0" => 7,
        "Q5_0" => 8,
        "Q5_1" => 9,
        "Q2_K" => 10,
        "Q3_K" => 11, // LLAMA_FTYPE_MOSTLY_Q3_K_S
        "Q4_K" => 14, // LLAMA_FTYPE_MOSTLY_Q4_K_S
        "Q5_K" => 16, // LLAMA_FTYPE_MOSTLY_Q5_K_S
        "Q6_K" => 18,
        "IQ4_NL" => 25,
        "IQ4_XS" => 30,
        "BF16" => 32,
        _ => return None,
    })
}

/// Every key of `file` as it is encoded, but the ones this run sets (`general.file_type`,
/// `quantize.*`). A shard of a split model (`split.count` above 1) is refused: its output
/// would be a model missing the other shards' tensors.
pub fn carried_metadata(file: &GgufFile) -> Result<Vec<(String, MetaValue)>> {
    let mut out = Vec::new();
    for entry in &file.header().metadata {
        if entry.key == "split.count" {
            let count = file.text(entry);
            if count != "1" {
                return Err(DataFusionError::Plan(format!(
                    "{}: one shard of a model split in {count} files; merge it first \
                     (llama-gguf-split --merge)",
                    file.path().display()
                )));
            }
        }
        if entry.key == FILE_TYPE
            || entry.key.starts_with(PROVENANCE_PREFIX)
            || entry.key.starts_with("split.")
        {
            continue;
        }
        let bytes = file.bytes(entry.value.start, entry.value.len()).to_vec();
        out.push((entry.key.clone(), MetaValue::Raw(entry.value_type, bytes)));
    }
    Ok(out)
}

/// The keys this run adds after the carried ones: `general.file_type` (the input's was not
/// carried), `general.quantization_version` when absent, and the provenance keys.
pub fn finish_metadata(
    mut metadata: Vec<(String, MetaValue)>,
    file_type: u32,
    provenance: Provenance,
) -> Vec<(String, MetaValue)> {
    metadata.push((FILE_TYPE.into(), MetaValue::U32(file_type)));
    if !metadata.iter().any(|(k, _)| k == QUANTIZATION_VERSION) {
        metadata.push((
            QUANTIZATION_VERSION.into(),
            MetaValue::U32(GGML_QNT_VERSION),
        ));
    }
    metadata.extend(provenance.entries());
    metadata
}

/// Where a file came from and how: `quantize.tool`, `quantize.version`, `quantize.scheme`,
/// `quantize.pure`, and `quantize.mixture`, one `NAME=TYPE: why` string per tensor llama.cpp
/// would quantize that is stored in another type than the scheme's (a shape fallback, a
/// sensitive layer, a quality fallback, a tensor kept as it was).
#[derive(Debug, Clone)]
pub struct Provenance {
    pub scheme: String,
    pub pure: bool,
    pub mixture: Vec<String>,
    /// The importance matrix, when one steered the codes.
    pub imatrix: Option<ImatrixProvenance>,
}

/// What llama-quantize records of the importance matrix it used: `quantize.imatrix.file`,
/// `.dataset`, `.entries_count` and `.chunks_count`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImatrixProvenance {
    pub file: String,
    pub datasets: Vec<String>,
    pub entries: usize,
    pub chunks: Option<u64>,
}

impl Provenance {
    fn entries(self) -> Vec<(String, MetaValue)> {
        let text = |s: &str| MetaValue::String(s.to_string());
        let mut imatrix = Vec::new();
        if let Some(m) = &self.imatrix {
            let count = |n: u64| MetaValue::I32(i32::try_from(n).unwrap_or(i32::MAX));
            imatrix.push(("quantize.imatrix.file".to_string(), text(&m.file)));
            if !m.datasets.is_empty() {
                imatrix.push((
                    "quantize.imatrix.dataset".to_string(),
                    text(&m.datasets.join(", ")),
                ));
            }
            imatrix.push((
                "quantize.imatrix.entries_count".to_string(),
                count(m.entries as u64),
            ));
            if let Some(chunks) = m.chunks {
                imatrix.push(("quantize.imatrix.chunks_count".to_string(), count(chunks)));
            }
        }
        let mut out = vec![
            ("quantize.tool".into(), text("arrowquant")),
            ("quantize.version".into(), text(env!("CARGO_PKG_VERSION"))),
            ("quantize.scheme".into(), text(&self.scheme)),
            ("quantize.pure".into(), MetaValue::Bool(self.pure)),
            (
                "quantize.mixture".into(),
                MetaValue::Array(
                    ValueType::String,
                    self.mixture.into_iter().map(MetaValue::String).collect(),
                ),
            ),
        ];
        out.extend(imatrix);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_types_are_llama_cpps() {
        let ty = |n: &str| GgmlType::from_name(n).unwrap();
        assert_eq!(llama_ftype(ty("Q4_0")), Some(2));
        assert_eq!(llama_ftype(ty("Q8_0")), Some(7));
        assert_eq!(llama_ftype(ty("Q4_K")), Some(14));
        assert_eq!(llama_ftype(ty("IQ4_XS")), Some(30));
        assert_eq!(llama_ftype(ty("IQ2_XXS")), None);
    }

    #[test]
    fn the_file_type_is_set_once_and_the_version_only_when_absent() {
        let given = vec![(QUANTIZATION_VERSION.to_string(), MetaValue::U32(2))];
        let provenance = Provenance {
            scheme: "q8_0".into(),
            pure: true,
            mixture: vec![],
            imatrix: None,
        };
        let m = finish_metadata(given, 7, provenance);
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                QUANTIZATION_VERSION,
                FILE_TYPE,
                "quantize.tool",
                "quantize.version",
                "quantize.scheme",
                "quantize.pure",
                "quantize.mixture"
            ]
        );
    }
}
