//! Activation calibration for diffusion models: recorded activations (layer, timestep, values)
//! in, one range per (layer, timestep group) out, with the thermodynamic constraints applied —
//! all of it SQL over the registered functions.
//!
//! 1. Group each layer's timesteps (`timestep_group`, or `timestep_group_adaptive`).
//! 2. One range per group (`quant_params ... GROUP BY layer, tg`); with `optimize`, the ranges
//!    of a layer's chain chosen jointly (`thermo_optimize`).
//! 3. Write `activation_params.parquet`; with smoothing, also `activation_schedule.parquet`
//!    (the range at every recorded timestep, `thermo_smooth` across group boundaries).
//! 4. Measure: mean activation MSE and Markov violations of the per-timestep scales, with one
//!    static range per layer, with plain group ranges (before) and with the final ones (after).

use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, Result};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use serde::Serialize;

use super::output::{PartialDir, write_table};
use crate::config::QuantConfig;
use crate::model::Model;

/// What calibration produced, for the summary and the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ActivationSummary {
    pub calibration: String,
    pub layers: usize,
    pub groups: usize,
    pub records: usize,
    pub bits: u8,
    pub grouping: String,
    pub smoothing: String,
    pub optimized: bool,
    /// Mean MSE over all recorded (layer, timestep) activations with one range per layer.
    pub static_mse: f64,
    /// With one range per group, chosen group by group.
    pub mse_before: f64,
    /// With the final ranges (optimised and/or smoothed).
    pub mse_after: f64,
    /// Jumps of more than 25 % between consecutive recorded timesteps' scales.
    pub markov_violations_before: i64,
    pub markov_violations_after: i64,
    pub files: Vec<String>,
}

fn plan_error(message: String) -> DataFusionError {
    DataFusionError::Plan(message)
}

/// The views of the calibration, as SQL statements (also printed by `--print-sql`).
pub fn calibration_sql(config: &QuantConfig) -> Vec<String> {
    let bits = config.activation_bits;
    let groups = config.timestep_groups;
    // Several records of one (layer, timestep) are samples of the same step: groups,
    // smoothing and Markov checks are functions of the timestep, so they run over distinct
    // timesteps and every record of a timestep shares its group and range.
    let groups_view = match config.grouping.as_str() {
        "adaptive" => format!(
            "CREATE VIEW calibration_groups AS\n\
             SELECT c.layer, CAST(c.timestep AS BIGINT) AS timestep, c.\"values\", g.tg\n\
             FROM calibration c JOIN (\n\
             \x20 SELECT layer, timestep,\n\
             \x20        timestep_group_adaptive(hi - lo, {groups}) OVER (PARTITION BY layer ORDER BY timestep) AS tg\n\
             \x20 FROM (SELECT layer, timestep, max(array_max(\"values\")) AS hi, min(array_min(\"values\")) AS lo\n\
             \x20       FROM calibration GROUP BY layer, timestep)\n\
             ) g ON c.layer = g.layer AND c.timestep = g.timestep"
        ),
        spacing => format!(
            "CREATE VIEW calibration_groups AS\n\
             SELECT layer, CAST(timestep AS BIGINT) AS timestep, \"values\",\n\
             \x20      timestep_group(timestep, {}, {groups}, '{spacing}') AS tg\n\
             FROM calibration",
            config.num_timesteps
        ),
    };
    let chosen = if config.optimize {
        format!(
            "thermo_optimize(state, {bits}, {}, {}) OVER (PARTITION BY layer ORDER BY tg)",
            config.lambda_markov, config.lambda_entropy
        )
    } else {
        "p".to_string()
    };
    let smooth = |column: &str| match config.smoothing.as_str() {
        "none" => format!("\"{column}\""),
        method => format!(
            "thermo_smooth(\"{column}\", '{method}') OVER (PARTITION BY layer ORDER BY timestep)"
        ),
    };
    vec![
        groups_view,
        format!(
            "CREATE VIEW group_params AS\n\
             SELECT layer, tg, min(timestep) AS first_timestep, max(timestep) AS last_timestep,\n\
             \x20      quant_params(\"values\", {bits}) AS p, flatten(array_agg(\"values\")) AS state\n\
             FROM calibration_groups GROUP BY layer, tg"
        ),
        format!(
            "CREATE VIEW chosen_params AS\n\
             SELECT layer, tg, first_timestep, last_timestep, {chosen} AS q FROM group_params"
        ),
        format!(
            "CREATE VIEW static_schedule AS\n\
             SELECT c.layer, c.timestep, c.\"values\", {} AS scale, s.p['offset'] AS \"offset\"\n\
             FROM calibration_groups c JOIN (SELECT layer, quant_params(\"values\", {bits}) AS p\n\
             \x20                              FROM calibration GROUP BY layer) s ON c.layer = s.layer",
            usable_scale("s.p")
        ),
        format!(
            "CREATE VIEW schedule_before AS\n\
             SELECT c.layer, c.timestep, c.\"values\", {} AS scale, g.p['offset'] AS \"offset\"\n\
             FROM calibration_groups c JOIN group_params g ON c.layer = g.layer AND c.tg = g.tg",
            usable_scale("g.p")
        ),
        format!(
            "CREATE VIEW timestep_ranges AS\n\
             SELECT layer, timestep, tg, {} AS scale, {} AS \"offset\"\n\
             FROM (SELECT DISTINCT c.layer, c.timestep, c.tg, {} AS scale, g.q['offset'] AS \"offset\"\n\
             \x20     FROM calibration_groups c JOIN chosen_params g ON c.layer = g.layer AND c.tg = g.tg)",
            smooth("scale"),
            smooth("offset"),
            usable_scale("g.q")
        ),
        "CREATE VIEW schedule_after AS\n\
         SELECT c.layer, c.timestep, c.tg, c.\"values\", r.scale, r.\"offset\"\n\
         FROM calibration_groups c JOIN timestep_ranges r ON c.layer = r.layer AND c.timestep = r.timestep"
            .to_string(),
    ]
}

/// The scale of parameters struct `p`, made usable for a range of zero width (a layer or group
/// whose activations are all equal): any positive scale then reproduces the value exactly
/// (code 0 is the offset), so a small one relative to the value is used instead of 0.
fn usable_scale(p: &str) -> String {
    format!(
        "CASE WHEN {p}['scale'] > 0 THEN {p}['scale'] \
         ELSE CAST(greatest(abs({p}['offset']), 1.0) / 1024.0 AS FLOAT) END"
    )
}

/// The `activation_params.parquet` query.
pub fn params_sql(config: &QuantConfig) -> String {
    format!(
        "SELECT layer, CAST(tg AS INT) AS \"group\", first_timestep, last_timestep,\n\
         \x20      {} AS scale, q['offset'] AS \"offset\", CAST({} AS TINYINT UNSIGNED) AS bits\n\
         FROM chosen_params ORDER BY layer, tg",
        usable_scale("q"),
        config.activation_bits
    )
}

/// The `activation_schedule.parquet` query (with smoothing).
fn schedule_sql(config: &QuantConfig) -> String {
    format!(
        "SELECT layer, timestep, CAST(tg AS INT) AS \"group\", CAST(scale AS FLOAT) AS scale,\n\
         \x20      CAST(\"offset\" AS FLOAT) AS \"offset\", CAST({} AS TINYINT UNSIGNED) AS bits\n\
         FROM timestep_ranges ORDER BY layer, timestep",
        config.activation_bits
    )
}

/// Mean MSE and Markov violations of one per-timestep schedule view.
/// The MSE is over records; violations are between consecutive distinct timesteps (every
/// record of a timestep has the same range).
fn measure_sql(view: &str, bits: u8) -> String {
    format!(
        "SELECT (SELECT avg(quant_mse(\"values\", scale, \"offset\", {bits})) FROM {view}) AS mse,\n\
         \x20      (SELECT count(*) FILTER (WHERE violation)\n\
         \x20       FROM (SELECT markov_violation(scale) OVER (PARTITION BY layer ORDER BY timestep) AS violation\n\
         \x20             FROM (SELECT DISTINCT layer, timestep, scale FROM {view}))) AS violations"
    )
}

/// Registers the calibration file as `calibration` and checks its columns.
pub async fn register_calibration(ctx: &SessionContext, path: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(meta) => {
            let kind = crate::model::input::file_kind(&meta);
            return Err(plan_error(format!(
                "calibration {path}: not a regular file ({kind})"
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(plan_error(format!("calibration {path}: no such file")));
        }
        Err(e) => return Err(plan_error(format!("calibration {path}: {e}"))),
    }
    // The footer is decoded here, before DataFusion reads it: a corrupt one is an error
    // naming the file, not a panic inside the parquet crate.
    crate::guard::check_parquet(Path::new(path))
        .map_err(|e| plan_error(format!("calibration {}", crate::cli::error_line(&e))))?;
    ctx.register_parquet("calibration", path, ParquetReadOptions::default())
        .await
        .map_err(|e| {
            plan_error(format!(
                "calibration {path}: not a readable Parquet file: {e}"
            ))
        })?;
    let schema = ctx.table("calibration").await?.schema().as_arrow().clone();
    let expect = "expected columns layer (string), timestep (integer), values (list of floats)";
    let column = |name: &str| {
        schema
            .field_with_name(name)
            .map(|f| f.data_type().clone())
            .map_err(|_| plan_error(format!("calibration {path}: no column '{name}' ({expect})")))
    };
    let layer = column("layer")?;
    let timestep = column("timestep")?;
    let values = column("values")?;
    let list_of_floats = match &values {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            f.data_type().is_floating()
        }
        _ => false,
    };
    if !matches!(
        layer,
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
    ) || !timestep.is_integer()
        || !list_of_floats
    {
        return Err(plan_error(format!(
            "calibration {path}: columns are layer {layer}, timestep {timestep}, values {values} ({expect})"
        )));
    }
    Ok(())
}

/// Checks what the SQL would otherwise refuse with less context: timesteps out of range,
/// non-finite activations, layers with fewer recorded timesteps than groups.
async fn check_calibration(
    ctx: &SessionContext,
    config: &QuantConfig,
    path: &str,
) -> Result<usize> {
    let bad = |sql: &str| {
        let sql = sql.to_string();
        async move {
            let batches = ctx.sql(&sql).await?.collect().await?;
            Ok::<_, DataFusionError>(batches.into_iter().find(|b| b.num_rows() > 0))
        }
    };
    let n = config.num_timesteps;
    if let Some(b) = bad(&format!(
        "SELECT layer, CAST(timestep AS BIGINT) FROM calibration \
         WHERE timestep < 0 OR timestep >= {n} OR timestep IS NULL LIMIT 1"
    ))
    .await?
    {
        let layer = string_at(b.column(0));
        let t = b.column(1).as_primitive::<Int64Type>();
        let t = if t.is_null(0) {
            "NULL".to_string()
        } else {
            t.value(0).to_string()
        };
        return Err(plan_error(format!(
            "calibration {path}: layer '{layer}': timestep {t} is outside [0, {n}) (num_timesteps = {n})"
        )));
    }
    if let Some(b) = bad(
        "SELECT layer, CAST(timestep AS BIGINT) FROM (SELECT layer, timestep, unnest(\"values\") AS v FROM calibration) \
         WHERE isnan(v) OR v IS NULL OR abs(v) = 'inf'::double LIMIT 1",
    )
    .await?
    {
        let layer = string_at(b.column(0));
        let t = b.column(1).as_primitive::<Int64Type>().value(0);
        return Err(plan_error(format!(
            "calibration {path}: layer '{layer}' timestep {t}: NaN, infinite or NULL activation values"
        )));
    }
    let counts = ctx
        .sql("SELECT layer, count(DISTINCT timestep) AS n FROM calibration GROUP BY layer ORDER BY n, layer LIMIT 1")
        .await?
        .collect()
        .await?;
    let Some(b) = counts.iter().find(|b| b.num_rows() > 0) else {
        return Err(plan_error(format!("calibration {path}: no records")));
    };
    let fewest = b.column(1).as_primitive::<Int64Type>().value(0);
    if fewest < i64::from(config.timestep_groups) {
        return Err(plan_error(format!(
            "calibration {path}: layer '{}' has {fewest} recorded timesteps, fewer than timestep_groups = {}",
            string_at(b.column(0)),
            config.timestep_groups
        )));
    }
    let records = ctx.table("calibration").await?.count().await?;
    Ok(records)
}

fn string_at(array: &dyn Array) -> String {
    match array.data_type() {
        DataType::Utf8View => array.as_string_view().value(0).to_string(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(0).to_string(),
        _ => array.as_string::<i32>().value(0).to_string(),
    }
}

/// Every group of every layer must hold records, or the layer has no range for those timesteps.
async fn check_groups(ctx: &SessionContext, config: &QuantConfig, path: &str) -> Result<()> {
    let batches = ctx
        .sql(&format!(
            "SELECT layer, count(*) AS n FROM group_params GROUP BY layer HAVING count(*) < {} ORDER BY layer LIMIT 1",
            config.timestep_groups
        ))
        .await?
        .collect()
        .await?;
    if let Some(b) = batches.iter().find(|b| b.num_rows() > 0) {
        return Err(plan_error(format!(
            "calibration {path}: layer '{}': only {} of {} {} timestep groups hold recorded timesteps; \
             record more timesteps or use fewer groups",
            string_at(b.column(0)),
            b.column(1).as_primitive::<Int64Type>().value(0),
            config.timestep_groups,
            config.grouping
        )));
    }
    Ok(())
}

/// Whether calibration layer `layer` (a module, as a forward hook names it) is the module of
/// model tensor `tensor`: `conv_in` is the module of `conv_in.weight`, and, in a diffusers
/// pipeline whose tensors carry their component's name, of `unet.conv_in.weight`.
pub fn layer_matches(layer: &str, tensor: &str) -> bool {
    let module_of = |name: &str| {
        name == layer || (name.starts_with(layer) && name[layer.len()..].starts_with('.'))
    };
    module_of(tensor)
        || tensor
            .split_once('.')
            .is_some_and(|(_, rest)| module_of(rest))
}

/// Every calibration layer must be a layer of the model: activation ranges recorded under a
/// name the model does not have would be written for nothing, and the model's real layer
/// would get none, silently.
async fn check_layers(ctx: &SessionContext, model: &Model, path: &str) -> Result<()> {
    let batches = query(ctx, "SELECT DISTINCT layer FROM calibration ORDER BY layer").await?;
    let mut layers = Vec::new();
    for b in &batches {
        let column = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let column = column.as_string::<i32>();
        for i in 0..b.num_rows() {
            if column.is_null(i) {
                return Err(plan_error(format!(
                    "calibration {path}: a record has no layer (NULL)"
                )));
            }
            layers.push(column.value(i).to_string());
        }
    }
    let unmatched: Vec<&String> = layers
        .iter()
        .filter(|l| !model.tensors.iter().any(|t| layer_matches(l, &t.layer)))
        .collect();
    let Some(first) = unmatched.first() else {
        return Ok(());
    };
    let others = match (unmatched.len() - 1, unmatched.len() == layers.len()) {
        (0, _) => String::new(),
        (1, true) => " (nor does the other calibration layer)".to_string(),
        (n, true) => format!(" (nor do the other {n} calibration layers)"),
        (1, false) => " (nor does 1 other calibration layer)".to_string(),
        (n, false) => format!(" (nor do {n} other calibration layers)"),
    };
    let nearest = nearest_modules(first, model)
        .into_iter()
        .map(|m| format!("'{m}'"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(plan_error(format!(
        "calibration {path}: layer '{first}' matches no layer of the model{others}; nearest \
         model layers: {nearest} (a calibration layer names a module, e.g. 'conv_in' for \
         the tensor 'conv_in.weight')"
    )))
}

/// The model's modules (tensor names without their last part) nearest to `layer` by edit
/// distance, at most three.
fn nearest_modules<'a>(layer: &str, model: &'a Model) -> Vec<&'a str> {
    let mut modules: Vec<&str> = model
        .tensors
        .iter()
        .map(|t| {
            t.layer
                .rsplit_once('.')
                .map_or(t.layer.as_str(), |(m, _)| m)
        })
        .collect();
    modules.sort_unstable();
    modules.dedup();
    let mut ranked: Vec<(usize, &str)> = modules
        .into_iter()
        .map(|m| (edit_distance(layer, m), m))
        .collect();
    ranked.sort_unstable();
    ranked.into_iter().take(3).map(|(_, m)| m).collect()
}

/// Levenshtein distance over the first 256 characters of each name (enough to rank names,
/// and bounded whatever the calibration file holds).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(256).collect();
    let b: Vec<char> = b.chars().take(256).collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

async fn query(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    ctx.sql(sql).await?.collect().await
}

/// Runs a query once and writes its result, with the query's own schema, to `path`.
async fn write_query(ctx: &SessionContext, sql: &str, path: &Path) -> Result<()> {
    let frame = ctx.sql(sql).await?;
    let schema = frame.schema().as_arrow().clone();
    let batches = frame.collect().await?;
    write_table(path, &batches, schema.into())
}

async fn measure(ctx: &SessionContext, view: &str, bits: u8) -> Result<(f64, i64)> {
    let batches = query(ctx, &measure_sql(view, bits)).await?;
    let b = &batches[0];
    Ok((
        b.column(0).as_primitive::<Float64Type>().value(0),
        b.column(1).as_primitive::<Int64Type>().value(0),
    ))
}

/// Calibrates activation ranges from `config.calibration` into `out`.
pub async fn calibrate(
    ctx: &SessionContext,
    config: &QuantConfig,
    model: &Model,
    out: &PartialDir,
) -> Result<Option<ActivationSummary>> {
    let Some(path) = config.calibration.as_deref() else {
        return Ok(None);
    };
    register_calibration(ctx, path).await?;
    check_layers(ctx, model, path).await?;
    let records = check_calibration(ctx, config, path).await?;
    for statement in calibration_sql(config) {
        ctx.sql(&statement).await?;
    }
    check_groups(ctx, config, path).await?;

    write_query(
        ctx,
        &params_sql(config),
        &out.file("activation_params.parquet"),
    )
    .await?;
    let mut files = vec!["activation_params.parquet".to_string()];
    if config.smoothing != "none" {
        let path = out.file("activation_schedule.parquet");
        write_query(ctx, &schedule_sql(config), &path).await?;
        files.push("activation_schedule.parquet".to_string());
    }

    let bits = config.activation_bits;
    let (static_mse, _) = measure(ctx, "static_schedule", bits).await?;
    let (mse_before, violations_before) = measure(ctx, "schedule_before", bits).await?;
    let (mse_after, violations_after) = measure(ctx, "schedule_after", bits).await?;
    let counts = query(
        ctx,
        "SELECT count(DISTINCT layer), count(*) FROM group_params",
    )
    .await?;
    Ok(Some(ActivationSummary {
        calibration: path.to_string(),
        layers: counts[0].column(0).as_primitive::<Int64Type>().value(0) as usize,
        groups: counts[0].column(1).as_primitive::<Int64Type>().value(0) as usize,
        records,
        bits,
        grouping: config.grouping.clone(),
        smoothing: config.smoothing.clone(),
        optimized: config.optimize,
        static_mse,
        mse_before,
        mse_after,
        markov_violations_before: violations_before,
        markov_violations_after: violations_after,
        files,
    }))
}
