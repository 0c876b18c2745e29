//! `arrowquant inspect`: one row per tensor with dtype, shape, bytes and statistics.

use std::path::PathBuf;

use clap::Args;
use datafusion::common::{DataFusionError, Result, exec_datafusion_err};

use super::sql::Format;
use crate::model::Model;
use crate::pipeline::plan::sql_string;

/// List a model's tensors: dtype, shape, bytes, and statistics of their values.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A safetensors file, a sharded checkpoint or a model folder.
    pub model: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Only the header: no pass over the values.
    #[arg(long)]
    pub header_only: bool,
}

/// The first tensor row holding NaN or ±Inf, as an error naming the tensor, row and value
/// (walked again with the scan's own reader; this runs only after the query failed).
fn locate_non_finite(model: &Model) -> Option<DataFusionError> {
    use arrowquant_udfs::kernels::error::check_finite;
    for (index, t) in model.tensors.iter().enumerate() {
        let mut found = None;
        crate::tables::scan::for_each_row(model, index, |row, values| match check_finite(values) {
            Ok(()) => true,
            Err(e) => {
                found = Some(exec_datafusion_err!("tensor '{}' row {row}: {e}", t.layer));
                false
            }
        });
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The query `inspect` runs.
pub fn inspect_sql(model: &str, header_only: bool) -> String {
    let path = sql_string(model);
    if header_only {
        return format!("SELECT layer, dtype, shape, bytes FROM safetensors_info({path})");
    }
    format!(
        "SELECT i.layer, i.dtype, i.shape, i.bytes,
       s.stats['min'] AS min, s.stats['max'] AS max, s.stats['mean'] AS mean,
       s.stats['std'] AS std, s.stats['kurtosis'] AS kurtosis,
       s.stats['outlier_ratio'] AS outlier_ratio
FROM safetensors_info({path}) i
LEFT JOIN (SELECT layer, weight_stats_agg(weights) AS stats
           FROM read_safetensors({path}) WHERE weights IS NOT NULL GROUP BY layer) s
  ON s.layer = i.layer
ORDER BY i.layer"
    )
}

pub async fn run(args: InspectArgs) -> Result<()> {
    let ctx = crate::session::context();
    let model = args.model.display().to_string();
    // Open first: a bad model is reported as itself, not as a failed query.
    let opened = crate::open_model(&args.model)?;
    let detection = crate::pipeline::modality::detect(&opened);
    let df = ctx.sql(&inspect_sql(&model, args.header_only)).await?;
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let batches = match df.collect().await {
        Ok(batches) => batches,
        // The aggregate numbers rows within a batch; name the tensor and its row instead.
        Err(e) if e.find_root().to_string().contains("weight_stats_agg: row ") => {
            return Err(locate_non_finite(&opened).unwrap_or(e));
        }
        Err(e) => return Err(e),
    };
    let format: datafusion_cli::print_format::PrintFormat = args.format.into();
    let mut out = std::io::stdout();
    format.print_batches(
        &mut out,
        schema,
        &batches,
        datafusion_cli::print_options::MaxRows::Unlimited,
        true,
        &datafusion::config::FormatOptions::default(),
    )?;
    if matches!(args.format, Format::Table) {
        println!(
            "{} tensors, {:.2} MB in {} file(s); modality: {} ({})",
            opened.tensors.len(),
            opened.data_bytes() as f64 / 1e6,
            opened.files.len(),
            detection.modality,
            detection.evidence
        );
    }
    Ok(())
}
