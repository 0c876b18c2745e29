//! `--imatrix FILE`: llama.cpp's importance matrix for a GGUF output. Each entry names a tensor
//! by its name in the output and gives the mean square of the layer's input per column (input
//! channel); a 2-D tensor's every row is quantized with that importance (the search minimises
//! Σ importance·(w − ŵ)²), and bit allocation weighs its error by it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};

use super::gguf_metadata::ImatrixProvenance;
use super::gguf_output::{InputTensor, Planned, Storage, UnetRules};
use crate::model::imatrix_file::ImatrixFile;

/// Per-column importance by input tensor name.
pub(super) type Importance = HashMap<String, Arc<Vec<f32>>>;

/// What an importance matrix gives a run: each covered tensor's importance by its input name,
/// a warning for each tensor whose importance cannot be applied (merged experts, whose rows
/// hold several input rows), and what the output records of the file.
pub(super) struct ImatrixUse {
    pub(super) importance: Importance,
    pub(super) warnings: Vec<String>,
    pub(super) provenance: ImatrixProvenance,
}

/// Reads and checks the importance matrix at `path` against the output's tensors.
pub(super) fn importance_of(
    path: &Path,
    tensors: &[InputTensor],
    names: &[String],
    plans: &[Planned],
    rules: UnetRules,
) -> Result<ImatrixUse> {
    let shown = path.display();
    if rules != UnetRules::None {
        return Err(DataFusionError::Plan(format!(
            "imatrix {shown}: importance matrices are llama.cpp's, for its models; this UNet's \
             rows are written in another layout"
        )));
    }
    let file = ImatrixFile::open(path).map_err(|e| DataFusionError::Plan(e.to_string()))?;
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut out = HashMap::new();
    let mut warnings = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for entry in &file.entries {
        if seen.contains(&entry.name.as_str()) {
            continue;
        }
        seen.push(&entry.name);
        let Some(&i) = index.get(entry.name.as_str()) else {
            return Err(DataFusionError::Plan(format!(
                "imatrix {shown}: tensor '{}' is not a tensor of the model",
                entry.name
            )));
        };
        let (t, p) = (&tensors[i], &plans[i]);
        let ne0 = t.dims.first().copied().unwrap_or(0) as usize;
        if entry.channels != ne0 {
            return Err(DataFusionError::Plan(format!(
                "imatrix {shown}: tensor '{}' has rows of {ne0} values, but its importance has \
                 {} channels",
                entry.name, entry.channels
            )));
        }
        if !matches!(p.storage, Storage::Blocks(_)) {
            continue;
        }
        if t.shape.len() != 2 {
            warnings.push(format!(
                "imatrix: the importance of '{}' ({}-D, {} matrices) is not applied: only 2-D \
                 tensors take it here",
                entry.name,
                t.shape.len(),
                file.matrices(&entry.name).len()
            ));
            continue;
        }
        let importance = file
            .flat_importance(&entry.name)
            .expect("an entry's tensor has its matrices");
        out.insert(t.name.clone(), Arc::new(importance));
    }
    let provenance = ImatrixProvenance {
        file: path.display().to_string(),
        datasets: file.datasets.clone(),
        entries: seen.len(),
        chunks: file.chunk_count,
    };
    Ok(ImatrixUse {
        importance: out,
        warnings,
        provenance,
    })
}
