//! The model pipeline (the `DiffusionOrchestrator` of the architecture we were asked to build): modality detection, the strategy
//! table, the quantization and report queries, and the output directory.

pub mod activations;
pub mod batch;
pub mod gguf_allocate;
pub mod gguf_arch;
pub mod gguf_checkpoint;
pub mod gguf_export;
pub mod gguf_importance;
pub mod gguf_metadata;
pub mod gguf_output;
pub mod gguf_recipe;
pub mod gguf_select;
pub mod modality;
pub mod output;
pub mod plan;
pub mod recipes;
pub mod run;
pub mod strategy;

pub use run::{Progress, RunOptions, RunSummary, plans, quantize_model};

use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::{DataFusionError, Result};

use crate::config::{OutputFormat, QuantConfig};
use gguf_output::{gguf_type_of, is_gguf_path, quantize_to_gguf};
use recipes::Recipe;

/// Refuses what a run of `model` with `config` cannot do, before any file is opened: keys
/// that only GGUF output takes, a GGUF model written as anything but GGUF, an unknown recipe, a
/// scheme GGUF has no type for.
pub fn check_run(model: &Path, config: &QuantConfig) -> Result<()> {
    let gguf = config.format == OutputFormat::Gguf;
    if let (Some(key), false) = (config.gguf_only_key(), gguf) {
        return Err(DataFusionError::Plan(format!(
            "{key}: applies to GGUF output only (--format gguf or -o OUT.gguf)"
        )));
    }
    if is_gguf_path(model) && !gguf {
        return Err(DataFusionError::Plan(format!(
            "{}: a GGUF model is written as GGUF: give -o OUT.gguf or --format gguf",
            model.display()
        )));
    }
    if let Some(recipe) = &config.recipe {
        Recipe::parse(recipe).map_err(|e| DataFusionError::Plan(format!("recipe: {e}")))?;
    } else if gguf && !config.allocating() {
        gguf_type_of(config.scheme)?;
    }
    Ok(())
}

/// Runs `options` into one GGUF file or an output directory, as its configuration's format
/// says (what `arrowquant quantize` and a server job run). A panic while the inputs are read
/// (the parquet crate panics on some corrupt pages) ends the run with an error naming them.
pub async fn quantize(
    options: &RunOptions,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<RunSummary> {
    if options.config.format == OutputFormat::Gguf {
        crate::guard::catch_panics("the model", quantize_to_gguf(options, progress)).await
    } else {
        // The calibration set is Parquet, read while the run goes.
        crate::guard::catch_panics(
            "the model or calibration set",
            quantize_model(options, progress),
        )
        .await
    }
}

/// A run's per-tensor report as JSON: one object a tensor, keyed by column.
pub fn report_rows(report: &[RecordBatch]) -> Result<serde_json::Value> {
    let mut buffer = Vec::new();
    {
        let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut buffer);
        for batch in report {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    if buffer.is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_slice(&buffer).map_err(|e| DataFusionError::External(Box::new(e)))
}
