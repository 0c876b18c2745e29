//! The scan behind `read_safetensors`: tensors cut into row batches straight from the memory map.
//!
//! F32 rows are handed out zero-copy when the file's alignment allows; F16 and BF16 are widened
//! exactly; F64 is narrowed to f32 (the quantizer's input width). The `data` column is always a
//! zero-copy view of the bytes as stored, so tensors kept unquantized (integers, bools, norms)
//! pass through bit for bit. Pages behind the scan are released as it moves on, so a model far
//! larger than memory is read with a bounded resident set.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Float32Array, Int64Array, ListArray, RecordBatch, StringArray,
};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use half::{bf16, f16};
use safetensors::Dtype;

use crate::model::{Model, ModelTensor, dtype_name, is_float, row_layout, row_values};

/// Source bytes per batch: large enough to amortise per-batch work, small enough to keep
/// memory flat and both cores busy.
pub const BATCH_BYTES: usize = 8 << 20;

/// The weights table every query reads (one row of a tensor per row: layer, row, shape, dtype,
/// weights), plus `data`: each row's bytes as stored.
pub fn weights_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("layer", DataType::Utf8, false),
        Field::new("row", DataType::Int64, false),
        Field::new(
            "shape",
            DataType::List(Arc::new(Field::new_list_field(DataType::Int64, false))),
            false,
        ),
        Field::new("dtype", DataType::Utf8, false),
        Field::new(
            "weights",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float32, false))),
            true,
        ),
        Field::new("data", DataType::Binary, false),
    ]))
}

/// A run of rows of one tensor, read as one batch.
#[derive(Debug, Clone, Copy)]
pub struct ScanUnit {
    pub tensor: usize,
    pub first_row: usize,
    pub rows: usize,
}

/// Rows per tensor and values per row; dtypes narrower than a byte (F4, F6) are one row.
fn layout(t: &ModelTensor) -> (usize, usize) {
    if !t.meta.dtype.bitsize().is_multiple_of(8) {
        return (1, t.meta.elements());
    }
    row_layout(&t.meta.shape)
}

fn values_in_row(t: &ModelTensor, row: usize) -> usize {
    if !t.meta.dtype.bitsize().is_multiple_of(8) {
        return t.meta.elements();
    }
    row_values(&t.meta.shape, row)
}

/// Cuts the chosen tensors into batches of about [`BATCH_BYTES`] and at most `max_rows` rows.
pub fn plan_units(model: &Model, tensors: &[usize], max_rows: usize) -> Vec<ScanUnit> {
    plan_rows(tensors, max_rows, |index| {
        let t = &model.tensors[index];
        let (rows, per_row) = layout(t);
        (rows, (per_row * t.meta.dtype.bitsize()).div_ceil(8))
    })
}

/// Cuts tensors of `(rows, bytes per row)` into units of about [`BATCH_BYTES`] and at most
/// `max_rows` rows: the batches of every weights-table scan.
pub fn plan_rows(
    tensors: &[usize],
    max_rows: usize,
    rows_and_bytes: impl Fn(usize) -> (usize, usize),
) -> Vec<ScanUnit> {
    let mut units = Vec::new();
    for &index in tensors {
        let (rows, row_bytes) = rows_and_bytes(index);
        let step = (BATCH_BYTES / row_bytes.max(1)).clamp(1, max_rows.max(1));
        let mut first = 0;
        while first < rows {
            let n = step.min(rows - first);
            units.push(ScanUnit {
                tensor: index,
                first_row: first,
                rows: n,
            });
            first += n;
        }
    }
    units
}

/// Splits units into `parts` contiguous runs of about equal bytes (contiguous keeps each
/// partition's reads sequential in the file).
pub fn split_units(model: &Model, units: Vec<ScanUnit>, parts: usize) -> Vec<Vec<ScanUnit>> {
    split_by_bytes(units, parts, |u| unit_bytes(model, u).1)
}

/// Splits units into at most `parts` contiguous runs of about equal `bytes`; none is empty.
pub fn split_by_bytes(
    units: Vec<ScanUnit>,
    parts: usize,
    bytes: impl Fn(&ScanUnit) -> usize,
) -> Vec<Vec<ScanUnit>> {
    let bytes = |u: &ScanUnit| bytes(u).max(1) as u64;
    let total: u64 = units.iter().map(bytes).sum();
    let parts = parts.max(1);
    let mut out: Vec<Vec<ScanUnit>> = vec![Vec::new(); parts];
    let mut done = 0u64;
    for u in units {
        let b = bytes(&u);
        let part = ((done + b / 2) * parts as u64 / total.max(1)).min(parts as u64 - 1) as usize;
        out[part].push(u);
        done += b;
    }
    out.retain(|p| !p.is_empty());
    out
}

/// Absolute byte range `(start, len)` of a unit in its file.
fn unit_bytes(model: &Model, u: &ScanUnit) -> (usize, usize) {
    let t = &model.tensors[u.tensor];
    let (_, per_row) = layout(t);
    let bits = t.meta.dtype.bitsize();
    let first_value = u.first_row * per_row;
    let values: usize = (u.first_row..u.first_row + u.rows)
        .map(|r| values_in_row(t, r))
        .sum();
    (
        t.meta.start + first_value * bits / 8,
        (values * bits).div_ceil(8),
    )
}

/// One partition of the scan.
#[derive(Debug)]
pub struct SafetensorsPartition {
    pub model: Arc<Model>,
    pub units: Vec<ScanUnit>,
    /// Columns of [`weights_schema`] to produce.
    pub projection: Vec<usize>,
    pub schema: SchemaRef,
}

impl PartitionStream for SafetensorsPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let model = self.model.clone();
        let projection = self.projection.clone();
        let schema = self.schema.clone();
        let units = self.units.clone();
        let mut previous: Option<ScanUnit> = None;
        let batches = units.into_iter().map(move |unit| {
            // The previous batch has been handed downstream and, in a pull-based plan, consumed:
            // its pages can go (if something still holds it, they fault back in unchanged).
            if let Some(done) = previous.replace(unit) {
                let (start, len) = unit_bytes(&model, &done);
                model.file(&model.tensors[done.tensor]).release(start, len);
            }
            read_unit(&model, &unit, &projection, &schema)
        });
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches),
        ))
    }
}

fn read_unit(
    model: &Model,
    unit: &ScanUnit,
    projection: &[usize],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let t = &model.tensors[unit.tensor];
    let rows = unit.rows;
    let row_lens: Vec<usize> = (unit.first_row..unit.first_row + rows)
        .map(|r| values_in_row(t, r))
        .collect();
    let columns: Vec<ArrayRef> = projection
        .iter()
        .map(|&column| match column {
            0 => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                &t.layer, rows,
            ))) as ArrayRef,
            1 => Arc::new(Int64Array::from_iter_values(
                (unit.first_row..unit.first_row + rows).map(|r| r as i64),
            )),
            2 => shape_column(&t.meta.shape, rows),
            3 => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                dtype_name(t.meta.dtype),
                rows,
            ))),
            4 => weights_column(model, t, unit, &row_lens),
            _ => data_column(model, t, unit, &row_lens),
        })
        .collect();
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

pub(crate) fn shape_column(shape: &[usize], rows: usize) -> ArrayRef {
    let values = Int64Array::from_iter_values(
        std::iter::repeat_n(shape, rows).flat_map(|s| s.iter().map(|&d| d as i64)),
    );
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(shape.len(), rows));
    Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(DataType::Int64, false)),
        offsets,
        Arc::new(values),
        None,
    ))
}

fn weights_column(model: &Model, t: &ModelTensor, unit: &ScanUnit, row_lens: &[usize]) -> ArrayRef {
    let field = Arc::new(Field::new_list_field(DataType::Float32, false));
    let offsets = OffsetBuffer::from_lengths(row_lens.iter().copied());
    if !is_float(t.meta.dtype) {
        let nulls = datafusion::arrow::buffer::NullBuffer::new_null(row_lens.len());
        let empty = OffsetBuffer::new_zeroed(row_lens.len());
        return Arc::new(ListArray::new(
            field,
            empty,
            Arc::new(Float32Array::from(Vec::<f32>::new())),
            Some(nulls),
        ));
    }
    let file = model.file(t);
    let (start, len) = unit_bytes(model, unit);
    let bytes = file.bytes(start, len);
    let values: ScalarBuffer<f32> = match t.meta.dtype {
        Dtype::F32 if (bytes.as_ptr() as usize).is_multiple_of(4) => {
            ScalarBuffer::new(file.buffer(start, len), 0, len / 4)
        }
        Dtype::F32 => widen(bytes, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::F16 => widen_f16(bytes),
        Dtype::BF16 => widen(bytes, 2, |b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        _ => widen(bytes, 8, |b| {
            f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
        }),
    };
    Arc::new(ListArray::new(
        field,
        offsets,
        Arc::new(Float32Array::new(values, None)),
        None,
    ))
}

pub(crate) fn widen(bytes: &[u8], width: usize, read: impl Fn(&[u8]) -> f32) -> ScalarBuffer<f32> {
    bytes
        .chunks_exact(width)
        .map(read)
        .collect::<Vec<_>>()
        .into()
}

/// F16 → f32 through `half`'s slice conversion (F16C when the CPU has it), a small stack block
/// at a time so no second copy of the row is allocated.
pub(crate) fn widen_f16(bytes: &[u8]) -> ScalarBuffer<f32> {
    use half::slice::HalfFloatSliceExt;
    const BLOCK: usize = 256;
    let mut out = vec![0f32; bytes.len() / 2];
    let mut halves = [f16::ZERO; BLOCK];
    for (chunk, dst) in bytes.chunks(2 * BLOCK).zip(out.chunks_mut(BLOCK)) {
        let n = dst.len();
        for (h, b) in halves[..n].iter_mut().zip(chunk.chunks_exact(2)) {
            *h = f16::from_le_bytes([b[0], b[1]]);
        }
        halves[..n].convert_to_f32_slice(dst);
    }
    out.into()
}

fn data_column(model: &Model, t: &ModelTensor, unit: &ScanUnit, row_lens: &[usize]) -> ArrayRef {
    let bits = t.meta.dtype.bitsize();
    let (start, len) = unit_bytes(model, unit);
    let offsets: Vec<i32> = std::iter::once(0)
        .chain(row_lens.iter().scan(0usize, |acc, &n| {
            *acc += (n * bits).div_ceil(8);
            Some(*acc as i32)
        }))
        .collect();
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    Arc::new(BinaryArray::new(
        offsets,
        model.file(t).buffer(start, len),
        None,
    ))
}

/// Every row of one float tensor as f32 values, batch by batch, for diagnostics that walk a
/// tensor outside a query. Calls `visit(row, values)` until it returns `false`.
pub fn for_each_row(model: &Model, tensor: usize, mut visit: impl FnMut(usize, &[f32]) -> bool) {
    let t = &model.tensors[tensor];
    if !is_float(t.meta.dtype) {
        return;
    }
    for unit in plan_units(model, &[tensor], usize::MAX) {
        let row_lens: Vec<usize> = (unit.first_row..unit.first_row + unit.rows)
            .map(|r| values_in_row(t, r))
            .collect();
        let column = weights_column(model, t, &unit, &row_lens);
        let list = datafusion::arrow::array::AsArray::as_list::<i32>(&column);
        let values = list.values();
        let values = datafusion::arrow::array::AsArray::as_primitive::<
            datafusion::arrow::datatypes::Float32Type,
        >(values)
        .values();
        let offsets = list.value_offsets();
        for (i, w) in offsets.windows(2).enumerate() {
            if !visit(unit.first_row + i, &values[w[0] as usize..w[1] as usize]) {
                return;
            }
        }
    }
}
