//! `arrowquant dequantize`: rebuilds a quantized model as a safetensors file its own framework
//! loads: every tensor in its original shape, quantized ones reconstructed at the chosen width,
//! kept ones byte for byte.
//!
//! The tensor table comes from `report.parquet`; the values from one query over
//! `weights.parquet`, whose rows are written straight to their place in the output file, so
//! rows may arrive in any order and memory stays flat.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type, Int64Type, Schema};
use datafusion::common::{DataFusionError, Result, exec_datafusion_err};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use half::{bf16, f16};

use crate::guard::{catch_panics, check_parquet, name_file};
use crate::model::{row_layout, row_values};
use crate::pipeline::output::{Inputs, PartialFile, shape_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutDtype {
    F32,
    F16,
    Bf16,
}

impl OutDtype {
    fn name(self) -> &'static str {
        match self {
            OutDtype::F32 => "F32",
            OutDtype::F16 => "F16",
            OutDtype::Bf16 => "BF16",
        }
    }
}

/// Rebuild a quantized model (an `arrowquant quantize` output directory) as a safetensors file.
#[derive(Debug, Args)]
pub struct DequantizeArgs {
    /// The output directory of `arrowquant quantize`.
    pub quantized: PathBuf,
    /// The safetensors file to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Width of the rebuilt quantized tensors (kept tensors keep their own dtype). f16 and
    /// bf16 saturate: a finite value beyond the type's range is written as its largest finite
    /// value (±65504 for f16), not as infinity.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: OutDtype,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// One tensor of the output file.
struct Slot {
    /// Its place in report.parquet (and in the output header).
    index: usize,
    /// The dtype it had in the source model.
    source: String,
    /// The dtype it is written in.
    dtype: String,
    shape: Vec<usize>,
    kept: bool,
    start: u64,
    bytes: u64,
    /// Bits per element as written.
    bits: usize,
    /// Its bytes in the source model, as the report records them.
    source_bytes: u64,
    elements: usize,
    /// Its rows in weights.parquet, and the values of each (the last chunk of a long 1-D
    /// tensor is shorter).
    rows: usize,
    per_row: usize,
}

impl Slot {
    fn row_values(&self, row: usize) -> usize {
        if self.rows == 1 {
            self.elements
        } else {
            row_values(&self.shape, row)
        }
    }

    /// Bytes of one row as written.
    fn row_bytes(&self, row: usize) -> u64 {
        (self.row_values(row) as u64 * self.bits as u64).div_ceil(8)
    }

    /// Where a row starts within the tensor (rows of sub-byte dtypes are whole tensors).
    fn row_offset(&self, row: usize) -> u64 {
        row as u64 * self.per_row as u64 * self.bits as u64 / 8
    }
}

fn dtype_bits(name: &str) -> Option<usize> {
    crate::model::safetensors_file::dtype_of_name(name).map(|d| d.bitsize())
}

pub async fn run(args: DequantizeArgs) -> Result<()> {
    let written = dequantize_model(&args.quantized, &args.output, args.dtype, args.force).await?;
    println!(
        "wrote {} ({} tensors, {:.2} MB)",
        args.output.display(),
        written.0,
        written.1 as f64 / 1e6
    );
    Ok(())
}

/// Writes the safetensors file; returns (tensors, bytes).
pub async fn dequantize_model(
    dir: &Path,
    output: &Path,
    dtype: OutDtype,
    force: bool,
) -> Result<(usize, u64)> {
    for name in ["weights.parquet", "report.parquet", "manifest.json"] {
        if dir.join(name).exists() && !dir.join(name).is_file() {
            return Err(DataFusionError::Plan(format!(
                "{}: not a file",
                dir.join(name).display()
            )));
        }
        if !dir.join(name).is_file() {
            return Err(DataFusionError::Plan(format!(
                "{}: not an arrowquant output directory (no {name})",
                dir.display()
            )));
        }
    }
    let mut inputs = Inputs::default();
    for name in ["weights.parquet", "report.parquet", "manifest.json"] {
        inputs.add(&dir.join(name), "quantized model");
    }
    inputs.add(dir, "quantized model");
    let out = PartialFile::create(output, &inputs, force)?;
    let ctx = crate::session::context();
    let (slots, order, header) = read_layout(&ctx, dir, dtype).await?;
    let data_bytes: u64 = slots.values().map(|s| s.bytes).sum();

    let file = out.file();
    let io = |e: std::io::Error| exec_datafusion_err!("cannot write {}: {e}", out.path().display());
    let base = 8 + header.len() as u64;
    file.set_len(base + data_bytes).map_err(io)?;
    file.write_all_at(&(header.len() as u64).to_le_bytes(), 0)
        .map_err(io)?;
    file.write_all_at(header.as_bytes(), 8).map_err(io)?;

    write_rows(&ctx, dir, &slots, dtype, file, base).await?;
    out.commit()?;
    Ok((order.len(), data_bytes))
}

/// The kinds of column the files are checked for.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Integer,
    IntegerList,
    Bytes,
    Quantized,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Text => "a string",
            Kind::Integer => "an integer",
            Kind::IntegerList => "a list of integers",
            Kind::Bytes => "binary",
            Kind::Quantized => "the struct quantize returns (with an integer 'len' field)",
        }
    }

    fn admits(self, t: &DataType) -> bool {
        let text = |t: &DataType| {
            matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
                || matches!(t, DataType::Dictionary(_, v) if matches!(**v, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View))
        };
        match self {
            Kind::Text => text(t),
            Kind::Integer => t.is_integer(),
            Kind::IntegerList => match t {
                DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                    f.data_type().is_integer()
                }
                _ => false,
            },
            Kind::Bytes => matches!(
                t,
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView
            ),
            Kind::Quantized => match t {
                DataType::Struct(fields) => fields
                    .iter()
                    .any(|f| f.name() == "len" && f.data_type().is_integer()),
                _ => false,
            },
        }
    }
}

/// Refuses a table without these columns of these kinds, naming the file and the column.
/// One of the output directory's Parquet files as a DataFrame, refused unless it has `columns`.
async fn read_checked(
    ctx: &SessionContext,
    path: &Path,
    file: &str,
    columns: &[(&str, Kind)],
) -> Result<datafusion::dataframe::DataFrame> {
    let df = ctx
        .read_parquet(
            path.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await?;
    require_columns(file, df.schema().as_arrow(), columns)?;
    Ok(df)
}

fn require_columns(file: &str, schema: &Schema, columns: &[(&str, Kind)]) -> Result<()> {
    for &(name, kind) in columns {
        let field = schema.field_with_name(name).map_err(|_| {
            DataFusionError::Plan(format!(
                "{file}: no column '{name}' (is this an arrowquant output?)"
            ))
        })?;
        if !kind.admits(field.data_type()) {
            return Err(DataFusionError::Plan(format!(
                "{file}: column '{name}' is {}, expected {}",
                field.data_type(),
                kind.describe()
            )));
        }
    }
    Ok(())
}

/// Reads and cross-checks report.parquet, manifest.json and the row index of weights.parquet:
/// every tensor complete (each of its rows present once, of the length its dtype and shape
/// need), nothing unknown, every size within range. Returns the offsets of every tensor and the
/// output header; nothing is written, and nothing is sized by a number these files hold, before
/// they agree.
async fn read_layout(
    ctx: &SessionContext,
    dir: &Path,
    dtype: OutDtype,
) -> Result<(HashMap<String, Slot>, Vec<String>, String)> {
    let report_path = dir.join("report.parquet");
    let weights_path = dir.join("weights.parquet");
    check_parquet(&report_path)?;
    check_parquet(&weights_path)?;
    let what = report_path.display().to_string();
    let report = catch_panics(&what, async {
        let df = read_checked(
            ctx,
            &report_path,
            "report.parquet",
            &[
                ("layer", Kind::Text),
                ("dtype", Kind::Text),
                ("shape", Kind::IntegerList),
                ("elements", Kind::Integer),
                ("action", Kind::Text),
                ("bytes_before", Kind::Integer),
            ],
        )
        .await?;
        df.select_columns(&[
            "layer",
            "dtype",
            "shape",
            "action",
            "elements",
            "bytes_before",
        ])?
        .collect()
        .await
    })
    .await
    .map_err(|e| name_file("report.parquet", e))?;
    let (slots, order, header) = layout(&report, dtype)?;
    check_manifest(&dir.join("manifest.json"), &slots)?;
    let what = weights_path.display().to_string();
    catch_panics(&what, check_rows(ctx, &weights_path, &slots, &order))
        .await
        .map_err(|e| name_file("weights.parquet", e))?;
    Ok((slots, order, header))
}

/// The counts manifest.json records must be those of report.parquet: a report with rows
/// dropped or added no longer matches the run that wrote it.
fn check_manifest(path: &Path, slots: &HashMap<String, Slot>) -> Result<()> {
    let bad = |reason: String| DataFusionError::Plan(format!("manifest.json: {reason}"));
    // A manifest is a few kilobytes; a huge file is not one (and is not read into memory).
    const MAX_MANIFEST: u64 = 16 << 20;
    let size = std::fs::metadata(path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?
        .len();
    if size > MAX_MANIFEST {
        return Err(bad(format!(
            "{size} bytes is too large for a manifest (at most {MAX_MANIFEST})"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let manifest: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if manifest["format"] != "arrowquant-1" {
        return Err(bad(format!(
            "format is {}, expected \"arrowquant-1\"",
            manifest["format"]
        )));
    }
    let count = |key: &str| {
        manifest["summary"][key].as_u64().ok_or_else(|| {
            bad(format!(
                "summary.{key} is {}, expected a whole number",
                manifest["summary"][key]
            ))
        })
    };
    let quantized = slots.values().filter(|s| !s.kept).count() as u64;
    let bytes_before: u64 = slots.values().map(|s| s.source_bytes).sum();
    for (key, in_report) in [
        ("tensors", slots.len() as u64),
        ("quantized", quantized),
        ("kept", slots.len() as u64 - quantized),
        ("bytes_before", bytes_before),
    ] {
        let recorded = count(key)?;
        if recorded != in_report {
            return Err(bad(format!(
                "summary.{key} is {recorded} but report.parquet adds up to {in_report}: \
                 the report does not belong to this run"
            )));
        }
    }
    Ok(())
}

/// Offsets of every tensor, and the JSON header (padded to 8 bytes, as the format's writers do).
fn layout(
    report: &[RecordBatch],
    dtype: OutDtype,
) -> Result<(HashMap<String, Slot>, Vec<String>, String)> {
    let mut slots: HashMap<String, Slot> = HashMap::new();
    let mut order = Vec::new();
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "producer": "arrowquant dequantize"}),
    );
    let mut offset = 0u64;
    let mut report_row = 0usize;
    for batch in report {
        let (layer, source, action) = (utf8(batch, 0)?, utf8(batch, 1)?, utf8(batch, 3)?);
        let (layer, source, action) = (
            layer.as_string::<i32>(),
            source.as_string::<i32>(),
            action.as_string::<i32>(),
        );
        let shape = cast(batch.column(2), &DataType::new_list(DataType::Int64, true))?;
        let shape = shape.as_list::<i32>();
        let elements = cast(batch.column(4), &DataType::Int64)?;
        let elements = elements.as_primitive::<Int64Type>();
        let source_bytes = cast(batch.column(5), &DataType::Int64)?;
        let source_bytes = source_bytes.as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let at = report_row;
            report_row += 1;
            if layer.is_null(row) {
                return Err(exec_datafusion_err!(
                    "report.parquet row {at}: the layer name is NULL"
                ));
            }
            let name = layer.value(row).to_string();
            let bad =
                |reason: String| exec_datafusion_err!("report.parquet: tensor '{name}': {reason}");
            for (column, array) in [
                ("dtype", source as &dyn Array),
                ("shape", shape as &dyn Array),
                ("action", action as &dyn Array),
                ("elements", elements as &dyn Array),
                ("bytes_before", source_bytes as &dyn Array),
            ] {
                if array.is_null(row) {
                    return Err(bad(format!("{column} is NULL")));
                }
            }
            let dims = shape_of(shape.value(row).as_ref()).map_err(bad)?;
            let kept = match action.value(row) {
                "keep" => true,
                "quantize" => false,
                other => {
                    return Err(bad(format!(
                        "action is '{other}', expected 'keep' or 'quantize'"
                    )));
                }
            };
            let source_dtype = source.value(row).to_string();
            let source_bits = dtype_bits(&source_dtype)
                .ok_or_else(|| bad(format!("unknown dtype {source_dtype}")))?;
            if !kept && !matches!(source_dtype.as_str(), "F16" | "BF16" | "F32" | "F64") {
                return Err(bad(format!(
                    "is quantized but its dtype {source_dtype} is not a float type"
                )));
            }
            let n = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                .ok_or_else(|| bad(format!("shape {dims:?} overflows")))?;
            if u64::try_from(elements.value(row)).ok() != Some(n) {
                return Err(bad(format!(
                    "shape {dims:?} has {n} elements but the elements column says {}",
                    elements.value(row)
                )));
            }
            let bytes_of = |bits: usize| {
                n.checked_mul(bits as u64)
                    .map(|b| b.div_ceil(8))
                    .ok_or_else(|| bad(format!("shape {dims:?} overflows")))
            };
            let recorded = bytes_of(source_bits)?;
            if u64::try_from(source_bytes.value(row)).ok() != Some(recorded) {
                return Err(bad(format!(
                    "bytes_before is {} but dtype {source_dtype} × shape {dims:?} is {recorded} bytes",
                    source_bytes.value(row)
                )));
            }
            if slots.contains_key(&name) {
                return Err(exec_datafusion_err!(
                    "report.parquet: tensor '{name}' is listed twice"
                ));
            }
            let out_dtype = if kept {
                source_dtype.clone()
            } else {
                dtype.name().to_string()
            };
            let bits = dtype_bits(&out_dtype).expect("a known dtype");
            let bytes = bytes_of(bits)?;
            let end = offset
                .checked_add(bytes)
                .ok_or_else(|| bad("the model's size overflows".into()))?;
            // Sub-byte dtypes (F4, F6) are read as one row, as the scan reads them.
            let (rows, per_row) = if source_bits.is_multiple_of(8) {
                row_layout(&dims)
            } else {
                (1, n as usize)
            };
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": out_dtype,
                    "shape": dims,
                    "data_offsets": [offset, end],
                }),
            );
            slots.insert(
                name.clone(),
                Slot {
                    index: order.len(),
                    source: source_dtype,
                    dtype: out_dtype,
                    shape: dims,
                    kept,
                    start: offset,
                    bytes,
                    bits,
                    source_bytes: recorded,
                    elements: n as usize,
                    rows,
                    per_row,
                },
            );
            order.push(name);
            offset = end;
        }
    }
    if order.is_empty() {
        return Err(exec_datafusion_err!("report.parquet lists no tensors"));
    }
    let mut text = serde_json::to_string(&header).expect("JSON");
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    Ok((slots, order, text))
}

/// One pass over the small columns of weights.parquet (no values are decoded): every row
/// belongs to a listed tensor, agrees with its shape and dtype, and has the length they need;
/// every tensor has each of its rows exactly once.
async fn check_rows(
    ctx: &SessionContext,
    path: &Path,
    slots: &HashMap<String, Slot>,
    order: &[String],
) -> Result<()> {
    let df = read_checked(
        ctx,
        path,
        "weights.parquet",
        &[
            ("layer", Kind::Text),
            ("row", Kind::Integer),
            ("shape", Kind::IntegerList),
            ("dtype", Kind::Text),
            ("q", Kind::Quantized),
            ("data", Kind::Bytes),
        ],
    )
    .await?;
    ctx.register_table("weights_index", df.into_view())?;
    let sql = "SELECT layer, CAST(row AS BIGINT), shape, dtype, q IS NOT NULL, \
               CAST(q['len'] AS BIGINT), data FROM weights_index";
    let mut stream = ctx.sql(sql).await?.execute_stream().await?;
    let by_index: Vec<&Slot> = order.iter().map(|n| &slots[n]).collect();
    // (tensor, row) of every row seen: as many entries as the file has rows, whatever the
    // report claims.
    let mut seen: Vec<(usize, usize)> = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let layer = utf8(&batch, 0)?;
        let layer = layer.as_string::<i32>();
        let row = batch.column(1).as_primitive::<Int64Type>();
        let shape = cast(batch.column(2), &DataType::new_list(DataType::Int64, true))?;
        let shape = shape.as_list::<i32>();
        let dtype = utf8(&batch, 3)?;
        let dtype = dtype.as_string::<i32>();
        let has_q = batch.column(4).as_boolean();
        let len = batch.column(5).as_primitive::<Int64Type>();
        let data = cast(batch.column(6), &DataType::Binary)?;
        let data = data.as_binary::<i32>();
        for i in 0..batch.num_rows() {
            if layer.is_null(i) {
                return Err(exec_datafusion_err!(
                    "weights.parquet: a row has a NULL layer name"
                ));
            }
            let name = layer.value(i);
            let slot = slots.get(name).ok_or_else(|| {
                exec_datafusion_err!(
                    "weights.parquet has rows of tensor '{name}', which report.parquet does not list"
                )
            })?;
            let r = slot_row(slot, name, row, i)?;
            let bad = |reason: String| exec_datafusion_err!("tensor '{name}' row {r}: {reason}");
            if shape.is_null(i)
                || shape_of(shape.value(i).as_ref()).ok().as_ref() != Some(&slot.shape)
            {
                return Err(bad(format!(
                    "its shape in weights.parquet is not the report's {:?}",
                    slot.shape
                )));
            }
            if dtype.is_null(i) || dtype.value(i) != slot.source {
                return Err(bad(format!(
                    "its dtype in weights.parquet is not the report's {}",
                    slot.source
                )));
            }
            let values = slot.row_values(r);
            if slot.kept {
                let need = slot.row_bytes(r);
                if data.is_null(i) {
                    return Err(bad("the tensor is kept but the row has no data".into()));
                }
                if data.value(i).len() as u64 != need {
                    return Err(bad(format!(
                        "{} bytes of data, but {values} values of {} need {need}",
                        data.value(i).len(),
                        slot.source
                    )));
                }
            } else {
                if !has_q.value(i) {
                    return Err(bad(
                        "the tensor is quantized but the row has no quantized value".into(),
                    ));
                }
                if len.is_null(i) || usize::try_from(len.value(i)).ok() != Some(values) {
                    return Err(bad(format!(
                        "the quantized value holds {} values, the shape {:?} needs {values}",
                        if len.is_null(i) {
                            "NULL".to_string()
                        } else {
                            len.value(i).to_string()
                        },
                        slot.shape
                    )));
                }
            }
            seen.push((slot.index, r));
        }
    }
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
        return Err(exec_datafusion_err!(
            "tensor '{}': row {} appears more than once in weights.parquet",
            order[w[0].0],
            w[0].1
        ));
    }
    // Sorted and distinct, with every row in range: a tensor is complete when it has as many
    // rows as its layout.
    let mut next = seen.iter().peekable();
    for slot in &by_index {
        let mut count = 0usize;
        while let Some(&(_, r)) = next.next_if(|(t, _)| *t == slot.index) {
            if r != count {
                break;
            }
            count += 1;
        }
        while next.next_if(|(t, _)| *t == slot.index).is_some() {}
        if count != slot.rows {
            return Err(exec_datafusion_err!(
                "tensor '{}': row {count} of its {} rows is missing from weights.parquet",
                order[slot.index],
                slot.rows
            ));
        }
    }
    Ok(())
}

/// A row number of a weights row, checked against its tensor's layout.
fn slot_row(
    slot: &Slot,
    name: &str,
    row: &datafusion::arrow::array::Int64Array,
    i: usize,
) -> Result<usize> {
    if row.is_null(i) {
        return Err(exec_datafusion_err!(
            "tensor '{name}': a row has a NULL row number"
        ));
    }
    usize::try_from(row.value(i))
        .ok()
        .filter(|&r| r < slot.rows)
        .ok_or_else(|| {
            exec_datafusion_err!(
                "tensor '{name}': row number {} is outside its {} rows (shape {:?})",
                row.value(i),
                slot.rows,
                slot.shape
            )
        })
}

async fn write_rows(
    ctx: &SessionContext,
    dir: &Path,
    slots: &HashMap<String, Slot>,
    dtype: OutDtype,
    file: &File,
    base: u64,
) -> Result<()> {
    let path = dir.join("weights.parquet");
    let what = path.display().to_string();
    catch_panics(&what, async {
        ctx.register_parquet(
            "quantized_weights",
            path.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await?;
        match stream_rows(ctx, slots, dtype, file, base).await {
            Err(e) if e.find_root().to_string().contains("dequantize: row ") => {
                Err(locate_bad_value(ctx).await.unwrap_or(e))
            }
            other => other,
        }
    })
    .await
    .map_err(|e| name_file("weights.parquet", e))
}

/// Decodes every row into its place. The rows were checked by [`check_rows`]; what is decoded
/// is checked again (a file changed in between fails here, not with a wrong model).
async fn stream_rows(
    ctx: &SessionContext,
    slots: &HashMap<String, Slot>,
    dtype: OutDtype,
    file: &File,
    base: u64,
) -> Result<()> {
    let sql = "SELECT layer, row, dequantize(q) AS values, data FROM quantized_weights";
    let mut stream = ctx.sql(sql).await?.execute_stream().await?;
    let mut buffer: Vec<u8> = Vec::new();
    let mut written = vec![0usize; slots.len()];
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let layer = utf8(&batch, 0)?;
        let layer = layer.as_string::<i32>();
        let row = cast(batch.column(1), &DataType::Int64)?;
        let row = row.as_primitive::<Int64Type>();
        let values = batch.column(2).as_list::<i32>();
        let data = cast(batch.column(3), &DataType::Binary)?;
        let data = data.as_binary::<i32>();
        for i in 0..batch.num_rows() {
            if layer.is_null(i) {
                return Err(exec_datafusion_err!(
                    "weights.parquet: a row has a NULL layer name"
                ));
            }
            let name = layer.value(i);
            let slot = slots.get(name).ok_or_else(|| {
                exec_datafusion_err!("row of '{name}' has no entry in report.parquet")
            })?;
            let r = slot_row(slot, name, row, i)?;
            let bytes: &[u8] = if slot.kept {
                if data.is_null(i) {
                    return Err(exec_datafusion_err!(
                        "tensor '{name}' is kept but row {r} has no data"
                    ));
                }
                data.value(i)
            } else {
                if values.is_null(i) {
                    return Err(exec_datafusion_err!(
                        "tensor '{name}' row {r} has no quantized value"
                    ));
                }
                let v = values.value(i);
                let v = v.as_primitive::<Float32Type>().values();
                if v.len() != slot.row_values(r) {
                    return Err(exec_datafusion_err!(
                        "tensor '{name}' row {r}: {} values decoded, its shape {:?} needs {}",
                        v.len(),
                        slot.shape,
                        slot.row_values(r)
                    ));
                }
                encode(v, dtype, &mut buffer);
                &buffer
            };
            if bytes.len() as u64 != slot.row_bytes(r) {
                return Err(exec_datafusion_err!(
                    "tensor '{name}' ({}) row {r}: {} bytes, its shape needs {}",
                    slot.dtype,
                    bytes.len(),
                    slot.row_bytes(r)
                ));
            }
            let offset = base + slot.start + slot.row_offset(r);
            file.write_all_at(bytes, offset)
                .map_err(|e| exec_datafusion_err!("cannot write tensor '{name}': {e}"))?;
            written[slot.index] += 1;
        }
    }
    if let Some((name, slot)) = slots.iter().find(|(_, s)| written[s.index] != s.rows) {
        return Err(exec_datafusion_err!(
            "tensor '{name}': {} of its {} rows were read (weights.parquet changed while it was read)",
            written[slot.index],
            slot.rows
        ));
    }
    Ok(())
}

/// After `dequantize` refused a value (its error names a row of a batch): the tensor and row
/// whose quantized value it was, found by decoding the rows again one batch, then one row, at
/// a time (this runs only after a failure).
async fn locate_bad_value(ctx: &SessionContext) -> Option<DataFusionError> {
    use datafusion::execution::FunctionRegistry;
    use datafusion::prelude::col;
    let dequantize = ctx.udf("dequantize").ok()?;
    let df = ctx
        .sql("SELECT layer, CAST(row AS BIGINT) AS row, q FROM quantized_weights WHERE q IS NOT NULL")
        .await
        .ok()?;
    let mut stream = df.execute_stream().await.ok()?;
    let decode = |batch: RecordBatch| {
        let call = dequantize.call(vec![col("q")]);
        async move { ctx.read_batch(batch)?.select(vec![call])?.collect().await }
    };
    while let Some(batch) = stream.next().await {
        let batch = batch.ok()?;
        let Err(mut error) = decode(batch.clone()).await else {
            continue;
        };
        // Halve the failing range until one row is left: a few decodes, not one per row.
        let (mut first, mut len) = (0, batch.num_rows());
        while len > 1 {
            let half = len / 2;
            match decode(batch.slice(first, half)).await {
                Err(e) => {
                    error = e;
                    len = half;
                }
                Ok(_) => {
                    first += half;
                    len -= half;
                }
            }
        }
        if let Err(e) = decode(batch.slice(first, 1)).await {
            error = e;
        }
        let layer = utf8(&batch, 0).ok()?;
        let layer = layer.as_string::<i32>();
        let row = batch.column(1).as_primitive::<Int64Type>();
        let message = super::error_line(&error);
        let reason = message
            .split_once("row 0: ")
            .map_or(message.as_str(), |(_, r)| r);
        return Some(exec_datafusion_err!(
            "tensor '{}' row {}: {reason}",
            layer.value(first),
            row.value(first)
        ));
    }
    None
}

/// A string column as Utf8, whatever string type Parquet gave back.
fn utf8(batch: &RecordBatch, column: usize) -> Result<ArrayRef> {
    Ok(cast(batch.column(column), &DataType::Utf8)?)
}

/// The largest finite values of the narrow output types: finite values beyond them are
/// written as these (saturated), not rounded to infinity.
const F16_MAX: f32 = 65504.0;
const BF16_MAX: f32 = 3.389_531_4e38;

fn encode(values: &[f32], dtype: OutDtype, out: &mut Vec<u8>) {
    out.clear();
    let saturate = |v: f32, max: f32| if v.is_finite() { v.clamp(-max, max) } else { v };
    match dtype {
        OutDtype::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        OutDtype::F16 => out.extend(
            values
                .iter()
                .flat_map(|&v| f16::from_f32(saturate(v, F16_MAX)).to_le_bytes()),
        ),
        OutDtype::Bf16 => out.extend(
            values
                .iter()
                .flat_map(|&v| bf16::from_f32(saturate(v, BF16_MAX)).to_le_bytes()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode16(bytes: &[u8], f: fn([u8; 2]) -> f32) -> Vec<f32> {
        bytes.chunks_exact(2).map(|c| f([c[0], c[1]])).collect()
    }

    #[test]
    fn f16_and_bf16_saturate_finite_values() {
        let input = [
            65504.0,
            65519.0,
            65520.0,
            70000.0,
            -1e30,
            f32::MAX,
            1.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let mut out = Vec::new();
        encode(&input, OutDtype::F16, &mut out);
        let half = decode16(&out, |b| f16::from_le_bytes(b).to_f32());
        assert_eq!(
            half,
            [
                65504.0,
                65504.0,
                65504.0,
                65504.0,
                -65504.0,
                65504.0,
                1.5,
                f32::INFINITY,
                f32::NEG_INFINITY
            ]
        );
        encode(&input, OutDtype::Bf16, &mut out);
        let brain = decode16(&out, |b| bf16::from_le_bytes(b).to_f32());
        assert_eq!(brain[5], bf16::MAX.to_f32());
        assert_eq!(brain[4], bf16::from_f32(-1e30).to_f32());
        assert!(brain[..7].iter().all(|v| v.is_finite()));
        assert_eq!(BF16_MAX, bf16::MAX.to_f32());
        encode(&[f32::NAN], OutDtype::F16, &mut out);
        assert!(f16::from_le_bytes([out[0], out[1]]).is_nan());
    }
}
