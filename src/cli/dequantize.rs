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
use datafusion::arrow::datatypes::{DataType, Float32Type, Int64Type};
use datafusion::common::{DataFusionError, Result, exec_datafusion_err};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use half::{bf16, f16};

use crate::model::row_layout;
use crate::pipeline::output::{Inputs, PartialFile};

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
    /// Width of the rebuilt quantized tensors.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: OutDtype,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

/// One tensor of the output file.
struct Slot {
    dtype: String,
    shape: Vec<usize>,
    kept: bool,
    start: u64,
    bytes: u64,
    /// Bits per element as written.
    bits: usize,
}

fn dtype_bits(name: &str) -> Option<usize> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ"
        | "F8_E5M2FNUZ" => 8,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
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
    let report = ctx
        .read_parquet(
            dir.join("report.parquet").to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await?
        .select_columns(&["layer", "dtype", "shape", "action"])?
        .collect()
        .await?;
    let (slots, order, header) = layout(&report, dtype)?;
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

/// Offsets of every tensor, and the JSON header (padded to 8 bytes, as the format's writers do).
fn layout(
    report: &[RecordBatch],
    dtype: OutDtype,
) -> Result<(HashMap<String, Slot>, Vec<String>, String)> {
    let mut slots = HashMap::new();
    let mut order = Vec::new();
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "producer": "arrowquant dequantize"}),
    );
    let mut offset = 0u64;
    for batch in report {
        let (layer, source, action) = (utf8(batch, 0)?, utf8(batch, 1)?, utf8(batch, 3)?);
        let (layer, source, action) = (
            layer.as_string::<i32>(),
            source.as_string::<i32>(),
            action.as_string::<i32>(),
        );
        let shape = cast(batch.column(2), &DataType::new_list(DataType::Int64, true))?;
        let shape = shape.as_list::<i32>();
        for row in 0..batch.num_rows() {
            let name = layer.value(row).to_string();
            let dims: Vec<usize> = shape
                .value(row)
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .map(|&d| d as usize)
                .collect();
            let kept = action.value(row) == "keep";
            let out_dtype = if kept {
                source.value(row).to_string()
            } else {
                dtype.name().to_string()
            };
            let bits = dtype_bits(&out_dtype).ok_or_else(|| {
                exec_datafusion_err!("tensor '{name}': unknown dtype {out_dtype}")
            })?;
            let elements: usize = dims.iter().product();
            let bytes = (elements * bits).div_ceil(8) as u64;
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": out_dtype,
                    "shape": dims,
                    "data_offsets": [offset, offset + bytes],
                }),
            );
            slots.insert(
                name.clone(),
                Slot {
                    dtype: out_dtype,
                    shape: dims,
                    kept,
                    start: offset,
                    bytes,
                    bits,
                },
            );
            order.push(name);
            offset += bytes;
        }
    }
    let mut text = serde_json::to_string(&header).expect("JSON");
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    Ok((slots, order, text))
}

async fn write_rows(
    ctx: &SessionContext,
    dir: &Path,
    slots: &HashMap<String, Slot>,
    dtype: OutDtype,
    file: &File,
    base: u64,
) -> Result<()> {
    ctx.register_parquet(
        "quantized_weights",
        dir.join("weights.parquet").to_string_lossy().as_ref(),
        ParquetReadOptions::default(),
    )
    .await?;
    let sql = "SELECT layer, row, dequantize(q) AS values, data FROM quantized_weights";
    let mut stream = ctx.sql(sql).await?.execute_stream().await?;
    let mut buffer: Vec<u8> = Vec::new();
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
            let name = layer.value(i);
            let slot = slots.get(name).ok_or_else(|| {
                exec_datafusion_err!("row of '{name}' has no entry in report.parquet")
            })?;
            let (_, per_row) = row_layout(&slot.shape);
            let first_value = row.value(i) as usize * per_row;
            let offset = base + slot.start + (first_value * slot.bits / 8) as u64;
            let bytes: &[u8] = if slot.kept {
                if data.is_null(i) {
                    return Err(exec_datafusion_err!(
                        "tensor '{name}' is kept but row {} has no data",
                        row.value(i)
                    ));
                }
                data.value(i)
            } else {
                if values.is_null(i) {
                    return Err(exec_datafusion_err!(
                        "tensor '{name}' row {} has no quantized value",
                        row.value(i)
                    ));
                }
                let v = values.value(i);
                encode(v.as_primitive::<Float32Type>().values(), dtype, &mut buffer);
                &buffer
            };
            if offset + bytes.len() as u64 > base + slot.start + slot.bytes {
                return Err(exec_datafusion_err!(
                    "tensor '{name}' ({}): row {} runs past the tensor's end",
                    slot.dtype,
                    row.value(i)
                ));
            }
            file.write_all_at(bytes, offset)
                .map_err(|e| exec_datafusion_err!("cannot write tensor '{name}': {e}"))?;
        }
    }
    Ok(())
}

/// A string column as Utf8, whatever string type Parquet gave back.
fn utf8(batch: &RecordBatch, column: usize) -> Result<ArrayRef> {
    Ok(cast(batch.column(column), &DataType::Utf8)?)
}

fn encode(values: &[f32], dtype: OutDtype, out: &mut Vec<u8>) {
    out.clear();
    match dtype {
        OutDtype::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        OutDtype::F16 => out.extend(values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes())),
        OutDtype::Bf16 => out.extend(values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes())),
    }
}
