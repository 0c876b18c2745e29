//! The orchestrator: one model in, one output directory out, every step a SQL query.
//!
//! 1. Detect the modality and plan each tensor (the `strategy` table).
//! 2. Run the quantization query, streaming its rows into `weights.parquet` and keeping the
//!    small per-row error sums.
//! 3. Aggregate them per tensor (the report query); tensors under the profile's cosine
//!    threshold are redone at the next wider setting and their rows replaced.
//! 4. With a calibration set, calibrate activation ranges per timestep group (activations.rs).
//! 5. Write `report.parquet` and `manifest.json`, then rename the directory into place.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int64Type, Schema};
use datafusion::common::{DataFusionError, Result, exec_datafusion_err};
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use serde::Serialize;

use super::activations::{ActivationSummary, calibrate};
use super::modality::{Detection, detect};
use super::output::{Inputs, PartialDir, TableWriter, write_table, write_text};
use super::plan::{REPORT_SQL, quantize_sql, sql_string};
use super::strategy::{TensorPlan, plan, strategy_batch};
use crate::config::QuantConfig;
use crate::model::Model;
use crate::model::safetensors_file::dtype_of_name;
use crate::tables::safetensors_info::info_batch;

/// What to quantize, where to, and how.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub model: PathBuf,
    pub output: PathBuf,
    pub config: QuantConfig,
    /// Replace an existing output directory.
    pub force: bool,
}

/// Progress reports, for a progress bar or a Python callback.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A pass starts over this many bytes of tensor data.
    Start { phase: String, bytes: u64 },
    /// This many more bytes are done.
    Advance { bytes: u64 },
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub output: PathBuf,
    pub modality: Detection,
    pub tensors: usize,
    pub quantized: usize,
    pub kept: usize,
    pub fallbacks: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub compression_ratio: f64,
    pub min_cosine: f64,
    pub mean_cosine: f64,
    pub seconds: f64,
    pub mb_per_second: f64,
    /// Activation calibration, when a calibration set was given.
    pub activations: Option<ActivationSummary>,
    /// Bit allocation under a size budget, when one was given (GGUF output).
    pub allocation: Option<super::gguf_allocate::AllocationSummary>,
    /// What the run noticed and went on from (an override that matched nothing).
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub report: Vec<RecordBatch>,
}

/// The SQL a run executes, for `--print-sql`.
pub fn plans(model: &Path, config: &QuantConfig) -> Vec<(&'static str, String)> {
    let source = model.display().to_string();
    let mut out = Vec::new();
    if config.calibration.is_some() {
        for statement in super::activations::calibration_sql(config) {
            out.push(("activation calibration", statement));
        }
        out.push((
            "activation_params.parquet",
            super::activations::params_sql(config),
        ));
    }
    out.extend([
        (
            "quantize (streamed into weights.parquet)",
            quantize_sql(&source, None),
        ),
        ("report (report.parquet)", REPORT_SQL.to_string()),
    ]);
    out
}

/// Quantizes a model into `options.output`.
pub async fn quantize_model(
    options: &RunOptions,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<RunSummary> {
    let started = Instant::now();
    let source = options.model.display().to_string();
    let model = crate::open_model(&options.model)?;
    let mut inputs = Inputs::of_model(&model);
    if let Some(calibration) = &options.config.calibration {
        inputs.add(Path::new(calibration), "calibration set");
    }
    let out = PartialDir::create(&options.output, &inputs, options.force)?;
    let modality = detect(&model);
    let mut plans = plan(&model, &options.config, modality.modality)?;
    if plans.iter().all(|p| p.setting.is_none()) {
        return Err(DataFusionError::Plan(format!(
            "{}: nothing to quantize: all {} tensors are kept (1-D, integer or empty)",
            source,
            plans.len()
        )));
    }

    // Small and quick: a bad calibration set fails before the long pass.
    let activations = calibrate(&crate::session::context(), &options.config, &model, &out).await?;

    let ctx = crate::session::pipeline_context();
    ctx.register_batch("tensors", info_batch(&model)?)?;
    ctx.register_batch("strategy", strategy_batch(&plans)?)?;
    let total_bytes = model.data_bytes();

    // Pass 1: every tensor.
    let weights_path = out.file("weights.parquet");
    let mut writer = TableWriter::create(&weights_path, weights_schema_of(&ctx, &source).await?)?;
    progress(Progress::Start {
        phase: "quantizing".into(),
        bytes: total_bytes,
    });
    let pass = run_pass(&ctx, &quantize_sql(&source, None), &mut writer, progress).await?;
    writer.finish()?;
    let mut errors = pass.errors;
    keep_refused(
        &ctx,
        &mut plans,
        &mut errors,
        pass.refused,
        &source,
        &out,
        progress,
    )
    .await?;

    // Fallback passes: tensors under the threshold, one step wider, until none is left.
    let mut report = tensor_report(&ctx, &errors).await?;
    let mut fallbacks = 0;
    loop {
        if !options.config.fallback {
            break;
        }
        let low = below_threshold(&report, options.config.min_cosine);
        let mut redo = Vec::new();
        for p in plans.iter_mut().filter(|p| low.contains(&p.layer)) {
            let current = p.setting.expect("only quantized tensors are measured");
            p.fallback_from.get_or_insert_with(|| current.to_string());
            p.setting = current.wider();
            if p.setting.is_none() {
                p.reason = format!("{}; kept: quality short at every width", p.reason);
            }
            redo.push(p.layer.clone());
        }
        if redo.is_empty() {
            break;
        }
        fallbacks += redo.len();
        ctx.deregister_table("strategy")?;
        ctx.register_batch("strategy", strategy_batch(&plans)?)?;
        let phase = format!("redoing {} tensors", redo.len());
        let redone = redo_layers(&ctx, &source, &redo, &out, &phase, progress).await?;
        errors = drop_layers(errors, &redo)?;
        errors.extend(redone.errors);
        keep_refused(
            &ctx,
            &mut plans,
            &mut errors,
            redone.refused,
            &source,
            &out,
            progress,
        )
        .await?;
        report = tensor_report(&ctx, &errors).await?;
    }

    let report_schema = report
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| Arc::new(Schema::empty()));
    write_table(&out.file("report.parquet"), &report, report_schema)?;
    let summary = RunSummary {
        activations,
        ..summarize(&report, &options.output, modality, fallbacks, started)
    };
    let manifest = manifest(options, &model, &summary);
    write_text(
        &out.file("manifest.json"),
        &serde_json::to_string_pretty(&manifest).expect("plain data serializes"),
    )?;
    out.commit()?;
    Ok(RunSummary {
        seconds: started.elapsed().as_secs_f64(),
        report,
        ..summary
    })
}

/// The output table's schema: the quantization query's columns minus the error sums.
async fn weights_schema_of(ctx: &SessionContext, source: &str) -> Result<Arc<Schema>> {
    let df = ctx.sql(&quantize_sql(source, Some(&[]))).await?;
    let schema = df.schema().as_arrow();
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| {
            !matches!(
                schema.field(i).name().as_str(),
                "error" | "stored_bytes" | "refused"
            )
        })
        .collect();
    Ok(Arc::new(schema.project(&keep)?))
}

/// A row the quantization query refused because no f16 scale or offset holds its values.
struct Refused {
    layer: String,
    row: i64,
    reason: String,
}

/// What one quantization query gave: each row's `(layer, error, stored_bytes)` and the rows
/// refused as beyond f16 range.
struct Pass {
    errors: Vec<RecordBatch>,
    refused: Vec<Refused>,
}

/// Tensors with rows beyond what f16 scales and offsets hold are kept as stored, with the
/// reason in the report, and their rows rewritten; the rest of the output stands.
async fn keep_refused(
    ctx: &SessionContext,
    plans: &mut [TensorPlan],
    errors: &mut Vec<RecordBatch>,
    refused: Vec<Refused>,
    source: &str,
    out: &PartialDir,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<()> {
    if refused.is_empty() {
        return Ok(());
    }
    // Per tensor: the first refused row, which the report names.
    let mut layers: Vec<(String, Refused)> = Vec::new();
    for r in refused {
        match layers.iter_mut().find(|(layer, _)| *layer == r.layer) {
            Some((_, first)) if r.row < first.row => *first = r,
            Some(_) => {}
            None => layers.push((r.layer.clone(), r)),
        }
    }
    // The largest magnitude of each whole tensor (it may lie in a row that was not refused),
    // read from these tensors only.
    let names: Vec<String> = layers.iter().map(|(layer, _)| layer.clone()).collect();
    let max_abs = tensor_absmax(ctx, source, &names).await?;
    for (layer, r) in &layers {
        let p = plans
            .iter_mut()
            .find(|p| p.layer == *layer)
            .ok_or_else(|| exec_datafusion_err!("refused rows of an unplanned tensor '{layer}'"))?;
        p.setting = None;
        let max = max_abs.get(layer.as_str()).copied().unwrap_or(f32::NAN);
        p.reason = format!(
            "values beyond f16 range: max |x| = {max:e} (row {}: {})",
            r.row, r.reason
        );
    }
    ctx.deregister_table("strategy")?;
    ctx.register_batch("strategy", strategy_batch(plans)?)?;
    let layers = names;
    let phase = format!("keeping {} tensors beyond f16 range", layers.len());
    let kept = redo_layers(ctx, source, &layers, out, &phase, progress).await?;
    *errors = drop_layers(std::mem::take(errors), &layers)?;
    errors.extend(kept.errors);
    Ok(())
}

/// The largest |x| of each of `layers`, by a query over those tensors only.
async fn tensor_absmax(
    ctx: &SessionContext,
    source: &str,
    layers: &[String],
) -> Result<std::collections::HashMap<String, f32>> {
    let sql = format!(
        "SELECT layer, max(weight_stats(weights)['absmax']) AS max_abs
         FROM read_safetensors({}) WHERE layer IN ({}) GROUP BY layer",
        sql_string(source),
        layers
            .iter()
            .map(|l| sql_string(l))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut out = std::collections::HashMap::new();
    for batch in ctx.sql(&sql).await?.collect().await? {
        let layer = column(&batch, "layer").as_string::<i32>();
        let max = column(&batch, "max_abs").as_primitive::<Float64Type>();
        for i in 0..batch.num_rows() {
            // The values are f32: printed as f32, as the kernels' messages print them.
            out.insert(layer.value(i).to_string(), max.value(i) as f32);
        }
    }
    Ok(out)
}

/// Quantizes `layers` again with the strategy as it now stands and replaces their rows in
/// `weights.parquet` (the other rows are copied across unchanged).
async fn redo_layers(
    ctx: &SessionContext,
    source: &str,
    layers: &[String],
    out: &PartialDir,
    phase: &str,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Pass> {
    let model_bytes = ctx
        .sql(&format!(
            "SELECT CAST(COALESCE(sum(bytes), 0) AS BIGINT) AS bytes FROM tensors WHERE layer IN ({})",
            layers.iter().map(|l| sql_string(l)).collect::<Vec<_>>().join(", ")
        ))
        .await?
        .collect()
        .await?;
    let bytes = model_bytes.first().map_or(0, |b| {
        column(b, "bytes").as_primitive::<Int64Type>().value(0)
    });
    progress(Progress::Start {
        phase: phase.to_string(),
        bytes: bytes.max(0) as u64,
    });
    let weights_path = out.file("weights.parquet");
    let merged_path = out.file("weights.merged.parquet");
    let mut merged = TableWriter::create(&merged_path, weights_schema_of(ctx, source).await?)?;
    let pass = run_pass(
        ctx,
        &quantize_sql(source, Some(layers)),
        &mut merged,
        progress,
    )
    .await?;
    copy_rows_except(ctx, &weights_path, layers, &mut merged).await?;
    merged.finish()?;
    std::fs::rename(&merged_path, &weights_path)
        .map_err(|e| exec_datafusion_err!("cannot replace {}: {e}", weights_path.display()))?;
    Ok(pass)
}

/// Runs one quantization query: rows to the writer, `(layer, error, stored_bytes)` kept. A
/// row refused for any reason but f16 range fails the run, naming its tensor and row.
async fn run_pass(
    ctx: &SessionContext,
    sql: &str,
    writer: &mut TableWriter,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Pass> {
    let mut stream = ctx.sql(sql).await?.execute_stream().await?;
    let mut errors = Vec::new();
    let mut refused = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        collect_refused(&batch, &mut refused)?;
        let schema = batch.schema();
        let index = |name: &str| schema.index_of(name);
        let keep: Vec<usize> = ["layer", "row", "shape", "dtype", "q", "data"]
            .iter()
            .map(|n| index(n))
            .collect::<std::result::Result<_, _>>()?;
        writer.write(&batch.project(&keep)?)?;
        errors.push(batch.project(&[index("layer")?, index("error")?, index("stored_bytes")?])?);
        progress(Progress::Advance {
            bytes: source_bytes(&batch)?,
        });
    }
    Ok(Pass { errors, refused })
}

/// The rows of a batch of the quantization query that the quantizer refused.
fn collect_refused(batch: &RecordBatch, into: &mut Vec<Refused>) -> Result<()> {
    let refused = column(batch, "refused").as_struct();
    if refused.null_count() == refused.len() {
        return Ok(());
    }
    let layer = column(batch, "layer").as_string::<i32>();
    let row = column(batch, "row").as_primitive::<Int64Type>();
    let field = |name: &str| {
        refused
            .column_by_name(name)
            .expect("a field of quantize_measured's refused struct")
    };
    let reason = field("reason").as_string::<i32>();
    let beyond_f16 = field("beyond_f16").as_boolean();
    for i in (0..batch.num_rows()).filter(|&i| refused.is_valid(i)) {
        if !beyond_f16.value(i) {
            return Err(exec_datafusion_err!(
                "tensor '{}' row {}: {}",
                layer.value(i),
                row.value(i),
                reason.value(i)
            ));
        }
        into.push(Refused {
            layer: layer.value(i).to_string(),
            row: row.value(i),
            reason: reason.value(i).to_string(),
        });
    }
    Ok(())
}

/// Bytes of source data behind a batch: values × dtype width, or the kept bytes.
fn source_bytes(batch: &RecordBatch) -> Result<u64> {
    let dtype = column(batch, "dtype").as_string::<i32>();
    let data = batch.column_by_name("data").expect("data");
    let data = data.as_any().downcast_ref::<BinaryArray>();
    let error = batch.column_by_name("error").expect("error").as_struct();
    let n = error
        .column_by_name("n")
        .expect("a field of error_sums")
        .as_primitive::<Int64Type>();
    let mut total = 0u64;
    for row in 0..batch.num_rows() {
        total += match data.filter(|d| d.is_valid(row)) {
            Some(d) => d.value(row).len() as u64,
            None => {
                let bits = dtype_of_name(dtype.value(row)).map_or(16, |d| d.bitsize());
                (n.value(row).max(0) as u64 * bits as u64).div_ceil(8)
            }
        };
    }
    Ok(total)
}

async fn tensor_report(ctx: &SessionContext, errors: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    let _ = ctx.deregister_table("row_errors")?;
    let schema = match errors.first() {
        Some(b) => b.schema(),
        None => {
            return Err(exec_datafusion_err!(
                "the quantization query produced no rows"
            ));
        }
    };
    ctx.register_table(
        "row_errors",
        Arc::new(MemTable::try_new(schema, vec![errors.to_vec()])?),
    )?;
    ctx.sql(REPORT_SQL).await?.collect().await
}

/// A column by name, of a batch whose query defines it.
fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    batch
        .column_by_name(name)
        .expect("a column the query defines")
}

fn below_threshold(report: &[RecordBatch], min_cosine: f64) -> HashSet<String> {
    let mut low = HashSet::new();
    for batch in report {
        let layer = column(batch, "layer").as_string::<i32>();
        let action = column(batch, "action").as_string::<i32>();
        let cosine = column(batch, "cosine").as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            let short = cosine.is_null(row) || cosine.value(row) < min_cosine;
            if action.value(row) == "quantize" && short {
                low.insert(layer.value(row).to_string());
            }
        }
    }
    low
}

/// Streams the rows of `path` whose layer is not in `layers` into `writer`.
async fn copy_rows_except(
    ctx: &SessionContext,
    path: &Path,
    layers: &[String],
    writer: &mut TableWriter,
) -> Result<()> {
    use datafusion::prelude::{col, lit};
    let list = layers.iter().map(|l| lit(l.as_str())).collect();
    let df = ctx
        .read_parquet(
            path.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await?
        .filter(col("layer").in_list(list, true))?;
    let mut stream = df.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        writer.write(&batch?)?;
    }
    Ok(())
}

fn drop_layers(batches: Vec<RecordBatch>, layers: &[String]) -> Result<Vec<RecordBatch>> {
    let drop: HashSet<&str> = layers.iter().map(String::as_str).collect();
    batches
        .into_iter()
        .map(|b| {
            let layer = column(&b, "layer").as_string::<i32>();
            let mask: datafusion::arrow::array::BooleanArray = layer
                .iter()
                .map(|l| Some(!drop.contains(l.unwrap_or(""))))
                .collect();
            Ok(datafusion::arrow::compute::filter_record_batch(&b, &mask)?)
        })
        .collect()
}

fn summarize(
    report: &[RecordBatch],
    output: &Path,
    modality: Detection,
    fallbacks: usize,
    started: Instant,
) -> RunSummary {
    let (mut tensors, mut quantized, mut before, mut after) = (0, 0, 0u64, 0u64);
    let (mut min_cos, mut sum_cos) = (f64::INFINITY, 0.0);
    for batch in report {
        let action = column(batch, "action").as_string::<i32>();
        let cosine = column(batch, "cosine").as_primitive::<Float64Type>();
        let b = column(batch, "bytes_before").as_primitive::<Int64Type>();
        let a = column(batch, "bytes_after").as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            tensors += 1;
            before += b.value(row) as u64;
            after += a.value(row) as u64;
            if action.value(row) == "quantize" {
                quantized += 1;
                let c = if cosine.is_null(row) {
                    0.0
                } else {
                    cosine.value(row)
                };
                min_cos = min_cos.min(c);
                sum_cos += c;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    RunSummary {
        output: output.to_path_buf(),
        modality,
        tensors,
        quantized,
        kept: tensors - quantized,
        fallbacks,
        bytes_before: before,
        bytes_after: after,
        compression_ratio: before as f64 / after.max(1) as f64,
        min_cosine: if quantized > 0 { min_cos } else { 1.0 },
        mean_cosine: if quantized > 0 {
            sum_cos / quantized as f64
        } else {
            1.0
        },
        seconds,
        mb_per_second: before as f64 / 1e6 / seconds.max(1e-9),
        activations: None,
        allocation: None,
        warnings: Vec::new(),
        report: Vec::new(),
    }
}

#[derive(Serialize)]
struct Manifest<'a> {
    format: &'static str,
    source: String,
    files: Vec<String>,
    config: &'a QuantConfig,
    modality: &'a Detection,
    versions: Versions,
    summary: &'a RunSummary,
    outputs: Vec<String>,
}

#[derive(Serialize)]
struct Versions {
    arrowquant: &'static str,
    datafusion: &'static str,
}

fn manifest<'a>(options: &'a RunOptions, model: &Model, summary: &'a RunSummary) -> Manifest<'a> {
    let absolute = |p: &Path| {
        p.canonicalize()
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    Manifest {
        format: "arrowquant-1",
        source: absolute(&options.model),
        files: model.files.iter().map(|f| absolute(f.path())).collect(),
        config: &options.config,
        modality: &summary.modality,
        versions: Versions {
            arrowquant: env!("CARGO_PKG_VERSION"),
            datafusion: datafusion::DATAFUSION_VERSION,
        },
        summary,
        outputs: ["weights.parquet", "report.parquet"]
            .into_iter()
            .map(String::from)
            .chain(summary.activations.iter().flat_map(|a| a.files.clone()))
            .collect(),
    }
}
