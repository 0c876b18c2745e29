//! `arrowquant export DIR -o OUT.gguf`: an output directory of `arrowquant quantize` (Parquet)
//! written as one GGUF file, without quantizing anything again.
//!
//! A GGUF scheme's stored codes are exactly a row's GGUF blocks, so a quantized tensor's data
//! is its rows' codes in row order, in the scheme's GGUF type; a tensor the run kept is written
//! as it was stored (1-D float tensors widened to F32, as llama.cpp's converter stores them).
//!
//! 1. `manifest.json` and the small columns of `weights.parquet` are read first: every tensor
//!    complete (each row once), one scheme a tensor. Every tensor GGUF cannot hold — an affine
//!    scheme (`asym`, `sym`, …, which have no GGUF type), GGUF blocks that do not divide its
//!    innermost dimension (ggml's rows), a dtype without a GGUF type — is listed in one
//!    refusal before a byte is written.
//! 2. The header is written, then each tensor's bytes, read by one query per tensor and placed
//!    by row number: one tensor is in memory at a time.
//!
//! The file is written under a temporary name beside OUT and renamed into place when complete
//! (see [`output`](super::output)); the directory is only read.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrowquant_udfs::kernels::scheme::Scheme;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{DataFusionError, Result, exec_datafusion_err};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;

use super::gguf_metadata::{Provenance, carried_metadata, finish_metadata, llama_ftype};
use super::gguf_output::{InputTensor, RowPlacer, is_gguf_path, row_major_dims};
use super::gguf_select::{ggml_dims, kept_by_llama_cpp};
use super::output::{Inputs, MANIFEST_FORMAT_PREFIX, PartialFile, shape_of};
use super::plan::sql_string;
use crate::guard::{catch_panics, check_parquet, name_file};
use crate::model::gguf_file::{GgmlType, MAX_DIMS};
use crate::model::gguf_write::{GgufWriter, MAX_NAME_BYTES, MetaValue, TensorInfo};
use crate::model::safetensors_file::dtype_of_name;
use crate::model::{row_layout, row_values};

/// A manifest is a few kilobytes; a huge file is not one (and is not read into memory).
const MAX_MANIFEST: u64 = 16 << 20;

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub output: PathBuf,
    pub tensors: usize,
    /// (GGUF type, tensors of it), most first.
    pub types: Vec<(&'static str, usize)>,
    /// The file's size.
    pub bytes: u64,
    /// Where the metadata came from.
    pub metadata: String,
}

/// What the manifest says about the run.
#[derive(Debug)]
struct Manifest {
    /// The model the run read.
    source: Option<PathBuf>,
    /// The run's scheme (`config.scheme`).
    scheme: Option<String>,
    pure: bool,
}

/// One tensor of `weights.parquet`.
#[derive(Debug)]
struct Stored {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    /// The scheme of its quantized rows; `None` for a tensor kept as stored (`data` rows).
    scheme: Option<String>,
}

/// How a tensor's bytes are made from its rows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bytes {
    /// The quantized rows' codes (GGUF blocks).
    Codes,
    /// The kept rows' bytes as they are.
    AsStored,
    /// The kept rows' values widened to F32 (from F16, BF16 or F64).
    ToF32,
}

struct Planned {
    tensor: InputTensor,
    ty: GgmlType,
    bytes: Bytes,
}

/// Writes the output directory `dir` as the GGUF file `output`.
pub async fn export_gguf(dir: &Path, output: &Path, force: bool) -> Result<ExportSummary> {
    let manifest_path = dir.join("manifest.json");
    let weights_path = dir.join("weights.parquet");
    let report_path = dir.join("report.parquet");
    if !dir.is_dir() {
        return Err(DataFusionError::Plan(format!(
            "{}: not an arrowquant output directory ({})",
            dir.display(),
            if dir.exists() {
                "not a directory"
            } else {
                "no such directory"
            }
        )));
    }
    for path in [&manifest_path, &weights_path] {
        if !path.is_file() {
            return Err(DataFusionError::Plan(format!(
                "{}: not an arrowquant output directory (no {})",
                dir.display(),
                path.file_name().unwrap_or_default().to_string_lossy()
            )));
        }
    }
    let manifest = read_manifest(&manifest_path)?;
    // The source model's metadata, when it was a GGUF file that is still there.
    let source_gguf = manifest
        .source
        .as_deref()
        .filter(|p| is_gguf_path(p) && p.is_file())
        .map(crate::open_gguf)
        .transpose()?;

    let mut inputs = Inputs::default();
    for path in [&manifest_path, &weights_path, &report_path] {
        inputs.add(path, "quantized model");
    }
    inputs.add(dir, "quantized model");
    if let Some(file) = &source_gguf {
        inputs.add(file.path(), "model");
    }
    let out = PartialFile::create(output, &inputs, force)?;

    let ctx = crate::session::context();
    check_parquet(&weights_path)?;
    let what = weights_path.display().to_string();
    let stored = catch_panics(&what, index(&ctx, &weights_path))
        .await
        .map_err(|e| name_file("weights.parquet", e))?;
    let reasons = if report_path.is_file() {
        check_parquet(&report_path)?;
        let what = report_path.display().to_string();
        catch_panics(&what, report_reasons(&ctx, &report_path))
            .await
            .map_err(|e| name_file("report.parquet", e))?
    } else {
        Vec::new()
    };
    let stored = in_report_order(stored, &reasons);
    let plans = plan(dir, &manifest, &stored)?;

    // The metadata: the source's keys, or a name; then the file type and provenance.
    let (carried, from) = match &source_gguf {
        Some(file) => (
            carried_metadata(file)?,
            format!("carried from {}", file.path().display()),
        ),
        None => {
            let name = manifest
                .source
                .as_deref()
                .or(Some(dir))
                .and_then(Path::file_stem)
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
            let from = format!("general.name = {name}");
            (
                vec![("general.name".to_string(), MetaValue::String(name))],
                from,
            )
        }
    };
    let base = base_type(&manifest, &plans)?;
    let file_type = llama_ftype(base).ok_or_else(|| {
        DataFusionError::Plan(format!(
            "GGUF type {} has no llama.cpp file type",
            base.name
        ))
    })?;
    let reason_of: HashMap<&str, &str> = reasons
        .iter()
        .map(|(l, r)| (l.as_str(), r.as_str()))
        .collect();
    let mixture = plans
        .iter()
        .filter(|p| {
            let quantized = p.bytes == Bytes::Codes;
            let llama_would = kept_by_llama_cpp(&p.tensor.name, &p.tensor.dims).is_none();
            (quantized || (llama_would && p.tensor.float)) && p.ty != base
        })
        .map(|p| {
            let why = reason_of.get(p.tensor.name.as_str()).copied().unwrap_or(
                if p.bytes == Bytes::Codes {
                    "quantized so in the output"
                } else {
                    "kept as stored in the output"
                },
            );
            format!("{}={}: {why}", p.tensor.name, p.ty.name)
        })
        .collect();
    let scheme = manifest.scheme.clone().unwrap_or_else(|| {
        Scheme::from_ggml_type(base.id)
            .map(|s| s.name().to_string())
            .unwrap_or_else(|| base.name.to_string())
    });
    let metadata = finish_metadata(
        carried,
        file_type,
        Provenance {
            scheme,
            pure: manifest.pure,
            mixture,
            imatrix: None,
        },
    );

    let infos: Vec<TensorInfo> = plans
        .iter()
        .map(|p| TensorInfo {
            name: p.tensor.name.clone(),
            ggml_type: p.ty,
            dims: p.tensor.dims.clone(),
        })
        .collect();
    let shown = output.display().to_string();
    let io_error = |e: std::io::Error| DataFusionError::Execution(format!("{shown}: {e}"));
    let buffered = BufWriter::with_capacity(1 << 20, out.file());
    let mut writer = GgufWriter::new(buffered, &metadata, &infos).map_err(io_error)?;
    for p in &plans {
        let data = catch_panics(&what, tensor_bytes(&ctx, p))
            .await
            .map_err(|e| name_file("weights.parquet", e))?;
        writer
            .write_tensor_bytes(&p.tensor.name, &data)
            .map_err(io_error)?;
    }
    let mut buffered = writer.finish().map_err(io_error)?;
    buffered.flush().map_err(io_error)?;
    drop(buffered);
    let bytes = out.file().metadata().map_err(io_error)?.len();
    out.commit()?;

    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for p in &plans {
        match counts.iter_mut().find(|(n, _)| *n == p.ty.name) {
            Some((_, c)) => *c += 1,
            None => counts.push((p.ty.name, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    Ok(ExportSummary {
        output: output.to_path_buf(),
        tensors: plans.len(),
        types: counts,
        bytes,
        metadata: from,
    })
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let bad = |why: String| DataFusionError::Plan(format!("{}: {why}", path.display()));
    let size = std::fs::metadata(path)
        .map_err(|e| bad(format!("cannot read it: {e}")))?
        .len();
    if size > MAX_MANIFEST {
        return Err(bad(format!(
            "{size} bytes is too large for a manifest (at most {MAX_MANIFEST})"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "not valid JSON ({e}), so not an arrowquant output's manifest"
        ))
    })?;
    let format = json.get("format").and_then(|f| f.as_str());
    if !format.is_some_and(|f| f.starts_with(MANIFEST_FORMAT_PREFIX)) {
        return Err(bad(format!(
            "not an arrowquant manifest (its format is {}, expected \"arrowquant-1\")",
            json.get("format").unwrap_or(&serde_json::Value::Null)
        )));
    }
    let config = json.get("config");
    Ok(Manifest {
        source: json
            .get("source")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        scheme: config
            .and_then(|c| c.get("scheme"))
            .and_then(|s| s.as_str())
            .map(str::to_string),
        pure: config
            .and_then(|c| c.get("pure"))
            .and_then(|p| p.as_bool())
            .unwrap_or(false),
    })
}

fn utf8(column: &ArrayRef) -> Result<ArrayRef> {
    Ok(cast(column, &DataType::Utf8)?)
}

/// The columns of `weights.parquet` an export reads, each of the kind it needs.
fn check_columns(df: &datafusion::dataframe::DataFrame) -> Result<()> {
    let schema = df.schema().as_arrow();
    let text = |t: &DataType| {
        matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
            || matches!(t, DataType::Dictionary(_, v)
                if matches!(**v, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View))
    };
    for (name, expected) in [
        ("layer", "text"),
        ("row", "an integer"),
        ("shape", "a list of integers"),
        ("dtype", "text"),
        ("q", "the struct quantize returns"),
        ("data", "binary"),
    ] {
        let field = schema.field_with_name(name).map_err(|_| {
            DataFusionError::Plan(format!(
                "weights.parquet: no column '{name}' (is this an arrowquant output?)"
            ))
        })?;
        let t = field.data_type();
        let admitted = match name {
            "row" => t.is_integer(),
            "shape" => matches!(t, DataType::List(f) | DataType::LargeList(f)
                if f.data_type().is_integer()),
            "q" => matches!(t, DataType::Struct(fields)
                if ["codes", "len", "scheme"]
                    .iter()
                    .all(|n| fields.iter().any(|f| f.name() == n))),
            "data" => matches!(
                t,
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView
            ),
            _ => text(t),
        };
        if !admitted {
            return Err(DataFusionError::Plan(format!(
                "weights.parquet: column '{name}' is {t}, expected {expected}"
            )));
        }
    }
    Ok(())
}

/// One pass over the small columns of `weights.parquet` (no codes are read): its tensors in
/// the order their rows first appear, each complete (every row once), of one shape, dtype and
/// scheme.
async fn index(ctx: &SessionContext, path: &Path) -> Result<Vec<Stored>> {
    ctx.register_parquet(
        "weights",
        path.to_string_lossy().as_ref(),
        ParquetReadOptions::default(),
    )
    .await?;
    check_columns(&ctx.table("weights").await?)?;
    let sql = "SELECT layer, CAST(row AS BIGINT) AS row, shape, dtype, q['scheme'] AS scheme, \
               CAST(q['len'] AS BIGINT) AS len, data IS NOT NULL AS has_data FROM weights";
    let mut stream = ctx.sql(sql).await?.execute_stream().await?;
    let mut tensors: Vec<Stored> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    // (tensor, row) of every row: as many as the file has rows, whatever the shapes claim.
    let mut seen: Vec<(usize, usize)> = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch: RecordBatch = batch?;
        let layer = utf8(batch.column(0))?;
        let layer = layer.as_string::<i32>();
        let row = batch.column(1).as_primitive::<Int64Type>();
        let shape = cast(batch.column(2), &DataType::new_list(DataType::Int64, true))?;
        let shape = shape.as_list::<i32>();
        let dtype = utf8(batch.column(3))?;
        let dtype = dtype.as_string::<i32>();
        let scheme = utf8(batch.column(4))?;
        let scheme = scheme.as_string::<i32>();
        let len = batch.column(5).as_primitive::<Int64Type>();
        let has_data = batch.column(6).as_boolean();
        for i in 0..batch.num_rows() {
            if layer.is_null(i) {
                return Err(exec_datafusion_err!(
                    "weights.parquet: a row has a NULL layer name"
                ));
            }
            let name = layer.value(i);
            if row.is_null(i) {
                return Err(exec_datafusion_err!(
                    "tensor '{name}': a row has a NULL row number"
                ));
            }
            let r = row.value(i);
            let bad = |why: String| exec_datafusion_err!("tensor '{name}' row {r}: {why}");
            let this_shape = if shape.is_null(i) {
                Err("its shape is NULL".to_string())
            } else {
                shape_of(shape.value(i).as_ref())
            }
            .map_err(bad)?;
            let this_scheme = (!scheme.is_null(i)).then(|| scheme.value(i));
            let quantized = this_scheme.is_some() || !len.is_null(i);
            if quantized == has_data.value(i) {
                return Err(bad(if quantized {
                    "it has both quantized codes and stored bytes".into()
                } else {
                    "it has neither quantized codes nor stored bytes".into()
                }));
            }
            let index = match by_name.get(name) {
                Some(&index) => index,
                None => {
                    tensors.push(Stored {
                        name: name.to_string(),
                        shape: this_shape.clone(),
                        dtype: if dtype.is_null(i) {
                            return Err(bad("its dtype is NULL".into()));
                        } else {
                            dtype.value(i).to_string()
                        },
                        scheme: this_scheme.map(str::to_string),
                    });
                    by_name.insert(name.to_string(), tensors.len() - 1);
                    tensors.len() - 1
                }
            };
            let t = &tensors[index];
            if this_shape != t.shape {
                return Err(bad(format!(
                    "its shape {this_shape:?} is not the {:?} of the tensor's first row",
                    t.shape
                )));
            }
            if dtype.is_null(i) || dtype.value(i) != t.dtype {
                return Err(bad(format!(
                    "its dtype is not the {} of the tensor's first row",
                    t.dtype
                )));
            }
            if this_scheme != t.scheme.as_deref() {
                let how =
                    |s: Option<&str>| s.map_or("kept as stored".into(), |s| format!("in {s}"));
                return Err(bad(format!(
                    "it is {}, but the tensor's first row is {}",
                    how(this_scheme),
                    how(t.scheme.as_deref())
                )));
            }
            let (rows, _) = row_layout(&t.shape);
            let r = usize::try_from(r)
                .ok()
                .filter(|&r| r < rows)
                .ok_or_else(|| bad(format!("outside its {rows} rows (shape {:?})", t.shape)))?;
            if quantized {
                let values = row_values(&t.shape, r);
                if len.is_null(i) || usize::try_from(len.value(i)).ok() != Some(values) {
                    return Err(bad(format!(
                        "its quantized value holds {} values, the shape {:?} needs {values}",
                        if len.is_null(i) {
                            "NULL".to_string()
                        } else {
                            len.value(i).to_string()
                        },
                        t.shape
                    )));
                }
            }
            seen.push((index, r));
        }
    }
    if tensors.is_empty() {
        return Err(exec_datafusion_err!("weights.parquet holds no tensors"));
    }
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
        return Err(exec_datafusion_err!(
            "tensor '{}': row {} appears more than once in weights.parquet",
            tensors[w[0].0].name,
            w[0].1
        ));
    }
    // Sorted, distinct and in range: a tensor is complete when it has as many rows as its
    // layout, and the first missing one is where the count stops.
    let mut next = seen.iter().peekable();
    for (index, t) in tensors.iter().enumerate() {
        let (rows, _) = row_layout(&t.shape);
        let mut count = 0usize;
        while let Some(&(_, r)) = next.next_if(|(i, _)| *i == index) {
            if r != count {
                break;
            }
            count += 1;
        }
        while next.next_if(|(i, _)| *i == index).is_some() {}
        if count != rows {
            return Err(exec_datafusion_err!(
                "tensor '{}': row {count} of its {rows} rows is missing from weights.parquet",
                t.name
            ));
        }
    }
    Ok(tensors)
}

/// `(layer, reason)` of every tensor in `report.parquet`, in its order (the model's).
async fn report_reasons(ctx: &SessionContext, path: &Path) -> Result<Vec<(String, String)>> {
    let df = ctx
        .read_parquet(
            path.to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await?;
    let schema = df.schema().as_arrow().clone();
    for name in ["layer", "reason"] {
        if schema.field_with_name(name).is_err() {
            return Err(DataFusionError::Plan(format!(
                "report.parquet: no column '{name}' (is this an arrowquant output?)"
            )));
        }
    }
    let mut out = Vec::new();
    for batch in df.select_columns(&["layer", "reason"])?.collect().await? {
        let layer = utf8(batch.column(0))?;
        let reason = utf8(batch.column(1))?;
        let (layer, reason) = (layer.as_string::<i32>(), reason.as_string::<i32>());
        for i in (0..batch.num_rows()).filter(|&i| layer.is_valid(i)) {
            let why = if reason.is_valid(i) {
                reason.value(i)
            } else {
                ""
            };
            out.push((layer.value(i).to_string(), why.to_string()));
        }
    }
    Ok(out)
}

/// The tensors in the report's order (the model's); the ones it does not list after, in the
/// order of weights.parquet.
fn in_report_order(mut stored: Vec<Stored>, report: &[(String, String)]) -> Vec<Stored> {
    let position: HashMap<&str, usize> = report
        .iter()
        .enumerate()
        .map(|(i, (l, _))| (l.as_str(), i))
        .collect();
    // A stable sort: unlisted tensors keep their relative order.
    stored.sort_by_key(|t| position.get(t.name.as_str()).copied().unwrap_or(usize::MAX));
    stored
}

/// Each tensor's GGUF type and how its bytes are made, or one refusal listing every tensor GGUF
/// cannot hold and why.
fn plan(dir: &Path, manifest: &Manifest, stored: &[Stored]) -> Result<Vec<Planned>> {
    let mut affine: Vec<String> = Vec::new();
    let mut misaligned: Vec<String> = Vec::new();
    let mut other: Vec<String> = Vec::new();
    let mut plans = Vec::new();
    let f32 = GgmlType::from_name("F32").expect("F32 is a ggml type");
    for t in stored {
        let dims = row_major_dims(&t.shape);
        let float = dtype_of_name(&t.dtype).is_some_and(crate::model::is_float);
        let tensor = InputTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            dims: dims.clone(),
            dtype: t.dtype.clone(),
            stored: GgmlType::from_name(&t.dtype).filter(|g| g.block_values == 1),
            float,
            block: false,
            from_checkpoint: true,
            bytes: 0,
        };
        if t.name.len() > MAX_NAME_BYTES {
            other.push(format!(
                "'{}' (its name is {} bytes, over the {MAX_NAME_BYTES} llama.cpp loads)",
                t.name,
                t.name.len()
            ));
            continue;
        }
        if dims.len() > MAX_DIMS {
            other.push(format!(
                "'{}' ({} dimensions, GGUF takes at most {MAX_DIMS})",
                t.name,
                dims.len()
            ));
            continue;
        }
        if t.shape.contains(&0) {
            other.push(format!("'{}' (shape {:?}: empty)", t.name, t.shape));
            continue;
        }
        let planned = match &t.scheme {
            Some(name) => {
                let scheme = match Scheme::parse_with_encoder(name) {
                    Ok((scheme, _)) => scheme,
                    Err(_) => {
                        other.push(format!("'{}' (unknown scheme '{name}')", t.name));
                        continue;
                    }
                };
                let Some(ty) = scheme.ggml_type().and_then(GgmlType::from_id) else {
                    affine.push(format!("'{}' ({scheme})", t.name));
                    continue;
                };
                let ne0 = dims[0];
                if !ne0.is_multiple_of(u64::from(ty.block_values)) {
                    misaligned.push(format!(
                        "'{}' ({} blocks of {}, innermost dimension {ne0})",
                        t.name, ty.name, ty.block_values
                    ));
                    continue;
                }
                Planned {
                    tensor,
                    ty,
                    bytes: Bytes::Codes,
                }
            }
            None => {
                let Some(ty) = tensor.stored else {
                    other.push(format!(
                        "'{}' (kept as {}, which GGUF has no type for)",
                        t.name, t.dtype
                    ));
                    continue;
                };
                // A checkpoint's 1-D float tensors become F32, as llama.cpp's converter stores
                // them (and `quantize -o OUT.gguf` does).
                if float && ggml_dims(&dims) < 2 && ty != f32 {
                    Planned {
                        tensor,
                        ty: f32,
                        bytes: Bytes::ToF32,
                    }
                } else {
                    Planned {
                        tensor,
                        ty,
                        bytes: Bytes::AsStored,
                    }
                }
            }
        };
        plans.push(planned);
    }
    if affine.is_empty() && misaligned.is_empty() && other.is_empty() {
        return Ok(plans);
    }
    let mut parts = Vec::new();
    if !affine.is_empty() {
        parts.push(format!(
            "GGUF has no type for the affine scheme of {} {}: {}",
            affine.len(),
            tensors(affine.len()),
            affine.join(", ")
        ));
    }
    if !misaligned.is_empty() {
        parts.push(format!(
            "{} {} GGUF blocks that do not divide the innermost dimension, which GGUF rows \
             are: {}",
            misaligned.len(),
            if misaligned.len() == 1 {
                "tensor holds"
            } else {
                "tensors hold"
            },
            misaligned.join(", ")
        ));
    }
    if !other.is_empty() {
        parts.push(format!("GGUF cannot hold {}", other.join(", ")));
    }
    let source = manifest
        .source
        .as_deref()
        .map_or("MODEL".to_string(), |p| p.display().to_string());
    let scheme = manifest
        .scheme
        .as_deref()
        .filter(|s| Scheme::parse_with_encoder(s).is_ok_and(|(s, _)| s.ggml_type().is_some()))
        .unwrap_or("q4_K");
    Err(DataFusionError::Plan(format!(
        "{} cannot be exported as GGUF, nothing was written: {}. Re-quantize with a GGUF scheme \
         (e.g. --scheme q4_K), or quantize straight to GGUF (arrowquant quantize {source} -o \
         OUT.gguf --scheme {scheme}), which stores what no block fits in F16",
        dir.display(),
        parts.join("; ")
    )))
}

fn tensors(n: usize) -> &'static str {
    if n == 1 { "tensor" } else { "tensors" }
}

/// The type `general.file_type` describes: the run's scheme's, when it has one, else the type
/// most quantized tensors have.
fn base_type(manifest: &Manifest, plans: &[Planned]) -> Result<GgmlType> {
    let of_run = manifest
        .scheme
        .as_deref()
        .and_then(|s| Scheme::parse_with_encoder(s).ok())
        .and_then(|(s, _)| s.ggml_type())
        .and_then(GgmlType::from_id);
    if let Some(ty) = of_run {
        return Ok(ty);
    }
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for p in plans.iter().filter(|p| p.bytes == Bytes::Codes) {
        match counts.iter_mut().find(|(t, _)| *t == p.ty) {
            Some((_, c)) => *c += 1,
            None => counts.push((p.ty, 1)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(_, c)| c)
        .map(|(t, _)| t)
        .ok_or_else(|| DataFusionError::Plan("weights.parquet holds no quantized tensor".into()))
}

/// One tensor's bytes in its GGUF type, its rows placed by row number.
async fn tensor_bytes(ctx: &SessionContext, p: &Planned) -> Result<Vec<u8>> {
    let column = match p.bytes {
        Bytes::Codes => "q['codes']",
        Bytes::AsStored | Bytes::ToF32 => "data",
    };
    let sql = format!(
        "SELECT CAST(row AS BIGINT) AS row, {column} AS bytes FROM weights WHERE layer = {}",
        sql_string(&p.tensor.name)
    );
    let mut placer = RowPlacer::new(&p.tensor, p.ty)?;
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    let mut scratch = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let rows = batch.column(0).as_primitive::<Int64Type>();
        let bytes = cast(batch.column(1), &DataType::Binary)?;
        let bytes = bytes.as_binary::<i32>();
        for i in 0..batch.num_rows() {
            let row = rows.value(i);
            if bytes.is_null(i) {
                return Err(exec_datafusion_err!(
                    "tensor '{}' row {row}: no bytes (weights.parquet changed while it was read?)",
                    p.tensor.name
                ));
            }
            let data = bytes.value(i);
            if p.bytes == Bytes::ToF32 {
                to_f32(&p.tensor, row, data, &mut scratch)?;
                placer.put(row, &scratch)?;
            } else {
                placer.put(row, data)?;
            }
        }
    }
    placer.finish()
}

/// A kept row's F16, BF16 or F64 values as F32 bytes.
fn to_f32(t: &InputTensor, row: i64, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    let width = match t.dtype.as_str() {
        "F16" | "BF16" => 2,
        "F64" => 8,
        other => {
            return Err(exec_datafusion_err!(
                "tensor '{}': cannot widen {other} to F32",
                t.name
            ));
        }
    };
    if !data.len().is_multiple_of(width) {
        return Err(exec_datafusion_err!(
            "tensor '{}' row {row}: {} bytes are not whole {} values",
            t.name,
            data.len(),
            t.dtype
        ));
    }
    for chunk in data.chunks_exact(width) {
        let v = match t.dtype.as_str() {
            "F16" => half::f16::from_le_bytes([chunk[0], chunk[1]]).to_f32(),
            "BF16" => half::bf16::from_le_bytes([chunk[0], chunk[1]]).to_f32(),
            _ => f64::from_le_bytes(chunk.try_into().expect("8 bytes")) as f32,
        };
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(())
}
