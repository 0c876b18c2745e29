//! `read_gguf('path')`: the weights table of a GGUF file, read from its memory map.
//!
//! The same rows as `read_safetensors` (a tensor of row-major shape `[d0, d1, …]` is `d0` rows
//! of `d1 × …` values; every GGUF row is whole blocks, since ggml's innermost dimension is a
//! multiple of the block), plus `ggml_type`. `data` is each row's bytes as stored, zero-copy:
//! for a block type, exactly its blocks. `weights` is the values: F32 zero-copy where aligned,
//! F16, BF16 and F64 widened or narrowed as `read_safetensors` does, every block type gguf-py
//! can dequantize (the legacy blocks, the k-quants, the i-quants, TQ1_0, TQ2_0, MXFP4 and
//! NVFP4) dequantized by ArrowQuant's kernels bit for bit as gguf-py does, NULL for integer
//! tensors; reading the weights of a block type without a decoder (Q8_1, Q8_K and Q1_0, which
//! gguf-py cannot dequantize either) is an error naming the tensor and the type.

use std::sync::{Arc, LazyLock};

use arrowquant_udfs::kernels::gguf::{self, GgufFormat};
use arrowquant_udfs::kernels::iquants::{self, IFormat};
use arrowquant_udfs::kernels::kquants::{self, KFormat};
use arrowquant_udfs::support::doc::DOC_TABLES;
use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Float32Array, Int32Array, Int64Array, ListArray, RecordBatch,
    RecordBatchOptions, StringArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Documentation, Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use half::bf16;

use super::scan::{
    ScanUnit, plan_rows, shape_column, split_by_bytes, weights_schema, widen, widen_f16,
};
use super::{path_argument, select_tensors, tensor_filter_pushdown, tensor_filters};
use crate::model::gguf_file::{GgufFile, GgufTensor};
use crate::model::{row_layout, row_values};

#[derive(Debug, Default)]
pub struct ReadGguf;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_TABLES,
        "The weights table of a GGUF file (versions 2 and 3, any alignment): the columns of \
         read_safetensors {layer, row, shape, dtype (the ggml type's name), weights \
         List<Float32>, data (the row's bytes as stored: for a block type, its blocks)} plus \
         ggml_type (the type's id). Memory-mapped; F32 zero-copy where aligned, F16 and BF16 \
         widened exactly, F64 narrowed; Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K … Q6_K, IQ1_S, IQ1_M, \
         IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4 and NVFP4 \
         dequantized by ArrowQuant's kernels, bit for bit as gguf-py's dequantize; weights is \
         NULL for integer tensors, and reading the weights of Q8_1, Q8_K or Q1_0 (which gguf-py \
         cannot dequantize either) is an error naming the tensor and the type (its data column \
         reads). Filters on layer and dtype are pushed down. A corrupt file is refused naming \
         the file and the key or tensor.",
        "read_gguf(path)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, row, quantize(weights, 4, 32, 'q4_0') AS q FROM read_gguf('model-f16.gguf') WHERE dtype = 'F16';\n```",
    )
    .with_argument("path", "A string literal: a .gguf file.")
    .build()
});

impl ReadGguf {
    /// What the catalogue and the README say of this function.
    pub fn documentation() -> &'static Documentation {
        &DOCUMENTATION
    }
}

impl TableFunctionImpl for ReadGguf {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let path = path_argument("read_gguf", &args)?;
        let file = crate::open_gguf(&path)?;
        Ok(Arc::new(GgufTable::new(Arc::new(file))))
    }
}

/// The weights table's columns, then `ggml_type`.
pub fn gguf_weights_schema() -> SchemaRef {
    let mut fields: Vec<Field> = weights_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("ggml_type", DataType::Int32, false));
    Arc::new(Schema::new(fields))
}

/// A GGUF file's tensors as the weights table.
#[derive(Debug)]
pub struct GgufTable {
    file: Arc<GgufFile>,
    schema: SchemaRef,
}

impl GgufTable {
    pub fn new(file: Arc<GgufFile>) -> Self {
        Self {
            file,
            schema: gguf_weights_schema(),
        }
    }
}

/// Values per row and bytes per row of a tensor.
fn row_size(t: &GgufTensor) -> (usize, usize) {
    let (_, per_row) = row_layout(&t.shape);
    (per_row, row_bytes(t, per_row))
}

fn row_bytes(t: &GgufTensor, values: usize) -> usize {
    values / t.ggml_type.block_values as usize * t.ggml_type.block_bytes as usize
}

/// Arrow list and binary rows use 32-bit offsets: a row must stay under 2 GiB of values and
/// of bytes.
fn check_row_sizes(file: &GgufFile, tensors: &[usize]) -> Result<()> {
    const LIMIT: usize = i32::MAX as usize;
    for &i in tensors {
        let t = &file.tensors()[i];
        let (per_row, bytes) = row_size(t);
        if per_row.saturating_mul(4) > LIMIT || bytes > LIMIT {
            return Err(DataFusionError::Plan(format!(
                "{}: tensor '{}' (shape {:?}): rows of {per_row} values are over the 2 GiB a \
                 row can hold",
                file.path().display(),
                t.name,
                t.shape
            )));
        }
    }
    Ok(())
}

/// Values of each row of a unit, and the unit's absolute byte range in the file.
fn extent(t: &GgufTensor, u: &ScanUnit) -> (Vec<usize>, usize, usize) {
    let lens: Vec<usize> = (u.first_row..u.first_row + u.rows)
        .map(|r| row_values(&t.shape, r))
        .collect();
    let (start, len) = byte_range(t, u, unit_values(t, u));
    debug_assert_eq!(lens.iter().sum::<usize>(), unit_values(t, u));
    (lens, start, len)
}

/// The absolute byte range of a unit of `values` values.
fn byte_range(t: &GgufTensor, u: &ScanUnit, values: usize) -> (usize, usize) {
    let (per_row, _) = row_size(t);
    (
        t.start + row_bytes(t, u.first_row * per_row),
        row_bytes(t, values),
    )
}

/// The values of a unit, without listing its rows: every row is full but a long 1-D tensor's
/// last chunk, which ends where the tensor does.
fn unit_values(t: &GgufTensor, u: &ScanUnit) -> usize {
    let (per_row, _) = row_size(t);
    (u.rows * per_row).min(t.elements() - u.first_row * per_row)
}

#[async_trait]
impl TableProvider for GgufTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(tensor_filter_pushdown(filters))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let pushed = tensor_filters(filters);
        let tensors = self.file.tensors();
        let chosen = select_tensors(
            state,
            &pushed,
            tensors.iter().map(|t| t.name.as_str()),
            tensors.iter().map(|t| t.ggml_type.name.to_string()),
        )?;
        check_row_sizes(&self.file, &chosen)?;
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        if projection.contains(&4) {
            check_decodable(&self.file, &chosen)?;
        }
        let options = state.config_options();
        let units = plan_rows(&chosen, options.execution.batch_size.get(), |i| {
            let t = &tensors[i];
            (row_layout(&t.shape).0, row_size(t).1)
        });
        let mut split = split_by_bytes(units, options.execution.target_partitions, |u| {
            let t = &tensors[u.tensor];
            row_bytes(t, unit_values(t, u))
        });
        if split.is_empty() {
            split.push(Vec::new());
        }
        let projected = Arc::new(self.schema.project(&projection)?);
        let partitions: Vec<Arc<dyn PartitionStream>> = split
            .into_iter()
            .map(|units| {
                Arc::new(GgufPartition {
                    file: self.file.clone(),
                    units,
                    projection: projection.clone(),
                    schema: projected.clone(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(
            projected,
            partitions,
            None,
            [],
            false,
            None,
        )?))
    }
}

/// How a tensor's values are read.
enum Decode {
    F32,
    F16,
    Bf16,
    F64,
    Integer,
    Blocks(GgufFormat),
    KBlocks(KFormat),
    IBlocks(IFormat),
}

fn decoder(t: &GgufTensor) -> Option<Decode> {
    Some(match t.ggml_type.name {
        "F32" => Decode::F32,
        "F16" => Decode::F16,
        "BF16" => Decode::Bf16,
        "F64" => Decode::F64,
        _ if t.ggml_type.is_integer() => Decode::Integer,
        _ => {
            let id = t.ggml_type.id;
            GgufFormat::from_ggml_type(id)
                .map(Decode::Blocks)
                .or_else(|| KFormat::from_ggml_type(id).map(Decode::KBlocks))
                .or_else(|| IFormat::from_ggml_type(id).map(Decode::IBlocks))?
        }
    })
}

/// Refuses, before any row is read, weights of a block type there is no decoder for.
fn check_decodable(file: &GgufFile, tensors: &[usize]) -> Result<()> {
    for &i in tensors {
        let t = &file.tensors()[i];
        if decoder(t).is_none() {
            return exec_err!(
                "read_gguf: {}: tensor '{}' is {}, which ArrowQuant cannot dequantize yet; \
                 its bytes read in the data column (gguf_info lists every tensor's type)",
                file.path().display(),
                t.name,
                t.ggml_type.name
            );
        }
    }
    Ok(())
}

#[derive(Debug)]
struct GgufPartition {
    file: Arc<GgufFile>,
    units: Vec<ScanUnit>,
    projection: Vec<usize>,
    schema: SchemaRef,
}

impl PartitionStream for GgufPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let file = self.file.clone();
        let projection = self.projection.clone();
        let schema = self.schema.clone();
        let mut previous: Option<ScanUnit> = None;
        let batches = self.units.clone().into_iter().map(move |unit| {
            // The previous batch has been handed downstream: its pages can go.
            if let Some(done) = previous.replace(unit) {
                let t = &file.tensors()[done.tensor];
                let (start, len) = byte_range(t, &done, unit_values(t, &done));
                file.release(start, len);
            }
            read_unit(&file, &unit, &projection, &schema)
        });
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches),
        ))
    }
}

fn read_unit(
    file: &GgufFile,
    unit: &ScanUnit,
    projection: &[usize],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let t = &file.tensors()[unit.tensor];
    let rows = unit.rows;
    let (lens, start, len) = extent(t, unit);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(projection.len());
    for &column in projection {
        columns.push(match column {
            0 => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                &t.name, rows,
            ))),
            1 => Arc::new(Int64Array::from_iter_values(
                (unit.first_row..unit.first_row + rows).map(|r| r as i64),
            )),
            2 => shape_column(&t.shape, rows),
            3 => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                t.ggml_type.name,
                rows,
            ))),
            4 => weights_column(file, t, unit.first_row, &lens, start, len)?,
            5 => {
                let offsets = OffsetBuffer::from_lengths(lens.iter().map(|&n| row_bytes(t, n)));
                Arc::new(BinaryArray::new(offsets, file.buffer(start, len), None))
            }
            _ => Arc::new(Int32Array::from_iter_values(std::iter::repeat_n(
                t.ggml_type.id as i32,
                rows,
            ))),
        });
    }
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

fn weights_column(
    file: &GgufFile,
    t: &GgufTensor,
    first_row: usize,
    lens: &[usize],
    start: usize,
    len: usize,
) -> Result<ArrayRef> {
    let field = Arc::new(Field::new_list_field(DataType::Float32, false));
    let bytes = file.bytes(start, len);
    let values: ScalarBuffer<f32> = match decoder(t) {
        Some(Decode::F32) if (bytes.as_ptr() as usize).is_multiple_of(4) => {
            ScalarBuffer::new(file.buffer(start, len), 0, len / 4)
        }
        Some(Decode::F32) => widen(bytes, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Some(Decode::F16) => widen_f16(bytes),
        Some(Decode::Bf16) => widen(bytes, 2, |b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        Some(Decode::F64) => widen(bytes, 8, |b| {
            f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
        }),
        Some(Decode::Integer) => {
            return Ok(Arc::new(ListArray::new(
                field,
                OffsetBuffer::new_zeroed(lens.len()),
                Arc::new(Float32Array::from(Vec::<f32>::new())),
                Some(NullBuffer::new_null(lens.len())),
            )));
        }
        // A unit's rows are contiguous whole blocks: one call decodes them all.
        Some(Decode::Blocks(format)) => decode_unit(file, t, first_row, lens, |values, out| {
            gguf::dequantize_row(format, bytes, values, out)
        })?,
        Some(Decode::KBlocks(format)) => decode_unit(file, t, first_row, lens, |values, out| {
            kquants::dequantize_row(format, bytes, values, out)
        })?,
        Some(Decode::IBlocks(format)) => decode_unit(file, t, first_row, lens, |values, out| {
            iquants::dequantize_row(format, bytes, values, out)
        })?,
        None => return exec_err!("read_gguf: tensor '{}': no decoder", t.name),
    };
    Ok(Arc::new(ListArray::new(
        field,
        OffsetBuffer::from_lengths(lens.iter().copied()),
        Arc::new(Float32Array::new(values, None)),
        None,
    )))
}

/// The values of a unit of block-encoded rows, decoded by `decode(values, out)`.
fn decode_unit(
    file: &GgufFile,
    t: &GgufTensor,
    first_row: usize,
    lens: &[usize],
    decode: impl FnOnce(usize, &mut Vec<f32>) -> arrowquant_udfs::kernels::error::Result<()>,
) -> Result<ScalarBuffer<f32>> {
    let values = lens.iter().sum();
    let mut out = Vec::with_capacity(values);
    decode(values, &mut out).map_err(|e| {
        DataFusionError::Execution(format!(
            "read_gguf: {}: tensor '{}' rows {} to {}: {e}",
            file.path().display(),
            t.name,
            first_row,
            first_row + lens.len() - 1
        ))
    })?;
    Ok(out.into())
}
