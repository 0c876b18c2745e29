//! The batch API's engine (`quantize_batch_arrow` in Python): a table of layers in — the
//! seed's input schema, one layer per row — and the seed's output table out, every layer
//! quantized and measured by SQL over DataFusion partitions.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, AsArray, Float32Builder, Int8Array, Int8Builder, Int64Array, ListArray, ListBuilder,
    RecordBatch, StringArray, UInt8Array, UInt32Array,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::QuantConfig;
use crate::udfs::common::QuantizedColumn;
use crate::udfs::kernels::packing;

/// Checks the seed's input schema: layer_name, weights, and optionally shape.
pub fn check_schema(schema: &Schema) -> Result<bool, String> {
    let expect = "expected columns layer_name (string), weights (list of floats), shape (list of integers, optional)";
    let field = |name: &str| {
        schema
            .field_with_name(name)
            .map_err(|_| format!("input has no column '{name}' ({expect})"))
    };
    let layer = field("layer_name")?;
    if !matches!(
        layer.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Err(format!(
            "column 'layer_name' is {}, not a string ({expect})",
            layer.data_type()
        ));
    }
    let weights = field("weights")?;
    let float_list = match weights.data_type() {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            f.data_type().is_floating()
        }
        _ => false,
    };
    if !float_list {
        return Err(format!(
            "column 'weights' is {}, not a list of floats ({expect})",
            weights.data_type()
        ));
    }
    match schema.field_with_name("shape") {
        Err(_) => Ok(false),
        Ok(f) => match f.data_type() {
            DataType::List(item) | DataType::LargeList(item) if item.data_type().is_integer() => {
                Ok(true)
            }
            other => Err(format!(
                "column 'shape' is {other}, not a list of integers ({expect})"
            )),
        },
    }
}

/// The seed's output schema, then the columns group-wise quantization needs.
pub fn output_schema() -> SchemaRef {
    let list = |item: DataType| DataType::List(Arc::new(Field::new_list_field(item, true)));
    Arc::new(Schema::new(vec![
        Field::new("layer_name", DataType::Utf8, true),
        Field::new("quantized_weights", list(DataType::Int8), true),
        Field::new("scale", DataType::Float32, true),
        Field::new("zero_point", DataType::Int8, true),
        Field::new("original_shape", list(DataType::Int64), true),
        Field::new("compression_ratio", DataType::Float32, true),
        Field::new("cosine_similarity", DataType::Float32, true),
        Field::new("scales", list(DataType::Float32), true),
        Field::new("zero_points", list(DataType::Int8), true),
        Field::new("offsets", list(DataType::Float32), true),
        Field::new("bits", DataType::UInt8, true),
        Field::new("group_size", DataType::UInt32, true),
        Field::new("scheme", DataType::Utf8, true),
    ]))
}

/// Quantizes the layers of `batches` (rows of the checked input schema) through SQL and
/// builds the seed's columns.
pub async fn quantize_batch(
    batches: Vec<RecordBatch>,
    schema: SchemaRef,
    has_shape: bool,
    config: &QuantConfig,
) -> Result<RecordBatch> {
    let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(partitions)
            .with_batch_size(1),
    );
    crate::udfs::register_all(&ctx);
    // Layers go round-robin into one partition per core, one layer per batch, numbered to
    // keep their order.
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
    let numbered_schema = {
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("__row", DataType::Int64, false));
        Arc::new(Schema::new(fields))
    };
    let mut row = 0i64;
    for batch in &batches {
        for i in 0..batch.num_rows() {
            let mut columns: Vec<ArrayRef> = batch.slice(i, 1).columns().to_vec();
            columns.push(Arc::new(Int64Array::from(vec![row])));
            parts[row as usize % partitions]
                .push(RecordBatch::try_new(Arc::clone(&numbered_schema), columns)?);
            row += 1;
        }
    }
    ctx.register_table(
        "input",
        Arc::new(MemTable::try_new(numbered_schema, parts)?),
    )?;
    let (shape, shape_source) = if has_shape {
        ("CAST(shape AS BIGINT[])", "shape,")
    } else {
        ("make_array(CAST(array_length(weights) AS BIGINT))", "")
    };
    // GGUF schemes have their own block size, whatever the configured group size.
    let group = match crate::udfs::kernels::Scheme::parse(&config.scheme)
        .ok()
        .and_then(|s| s.gguf())
    {
        Some(_) => crate::udfs::kernels::gguf::BLOCK.to_string(),
        None => format!("'{}'", config.group_size),
    };
    let sql = format!(
        "SELECT arrow_cast(layer_name, 'Utf8') AS layer_name, q, {shape} AS original_shape,
                CAST(compression_ratio(q) AS FLOAT) AS compression_ratio,
                error_sums(weights, q) AS e
         FROM (SELECT __row, layer_name, {shape_source} weights,
                      quantize(weights, {bits}, {group}, '{scheme}') AS q
               FROM input)
         ORDER BY __row",
        bits = config.bit_width,
        group = group,
        scheme = config.scheme,
    );
    let results = ctx.sql(&sql).await?.collect().await?;
    let out_schema = output_schema();
    if results.is_empty() {
        return Ok(RecordBatch::new_empty(out_schema));
    }
    let merged = concat_batches(&results[0].schema(), &results)?;
    seed_columns(&merged, out_schema)
}

/// The seed's per-layer view of each quantized struct: signed codes (code − 2^(bits−1)), one
/// scale and zero point when the layer has one group, every group's in the added list columns.
fn seed_columns(batch: &RecordBatch, schema: SchemaRef) -> Result<RecordBatch> {
    let q = batch.column_by_name("q").expect("query column");
    let quantized = QuantizedColumn::new(q)?;
    let sums = batch.column_by_name("e").expect("query column").as_struct();
    let field = |name: &str| {
        sums.column_by_name(name)
            .expect("error_sums field")
            .as_primitive::<Float64Type>()
            .clone()
    };
    let (dot, a_sq, b_sq) = (field("dot"), field("a_sq"), field("b_sq"));
    let rows = batch.num_rows();
    // The codes (100 MB for 100 layers of 4 MB) go straight into one buffer.
    let total: usize = (0..rows)
        .filter_map(|r| quantized.get(r).ok().flatten())
        .map(|r| r.len as usize)
        .sum();
    let mut codes: Vec<i8> = Vec::with_capacity(total);
    let mut code_offsets: Vec<i32> = Vec::with_capacity(rows + 1);
    code_offsets.push(0);
    let mut code_valid: Vec<bool> = Vec::with_capacity(rows);
    let mut scale = Float32Builder::with_capacity(rows);
    let mut zero_point = Int8Builder::with_capacity(rows);
    let mut scales = ListBuilder::new(Float32Builder::new());
    let mut zero_points = ListBuilder::new(Int8Builder::new());
    let mut offsets = ListBuilder::new(Float32Builder::new());
    let mut cosine = Float32Builder::with_capacity(rows);
    let mut bits = Vec::with_capacity(rows);
    let mut group_size = Vec::with_capacity(rows);
    let mut scheme = Vec::with_capacity(rows);
    let mut unpacked = Vec::new();
    for row in 0..rows {
        let Some(r) = quantized.get(row).map_err(DataFusionError::Execution)? else {
            return Err(DataFusionError::Execution(format!(
                "layer {row}: no quantized value"
            )));
        };
        let centre = 1i32 << (r.bits - 1);
        let zero = |s: f32, o: f32| -> i8 {
            if s > 0.0 {
                ((-o / s).round() as i32 - centre).clamp(-128, 127) as i8
            } else {
                0
            }
        };
        if r.scheme.gguf().is_some() {
            // GGUF blocks keep their scales inside the block bytes (see the `q` of SQL).
            code_valid.push(false);
            scales.append(true);
            zero_points.append(true);
            offsets.append(true);
            scale.append_null();
            zero_point.append_null();
        } else {
            packing::unpack(r.codes, r.bits, r.len as usize, &mut unpacked)
                .map_err(|e| DataFusionError::Execution(e.to_string()))?;
            let shift = centre as u8;
            codes.extend(unpacked.iter().map(|&c| c.wrapping_sub(shift) as i8));
            code_valid.push(true);
            let group_scales: Vec<f32> = r.scales.iter().map(|s| s.to_f32()).collect();
            let group_offsets: Vec<f32> = if r.offsets.is_empty() {
                // Symmetric: code `centre` is zero.
                group_scales.iter().map(|s| -s * centre as f32).collect()
            } else {
                r.offsets.iter().map(|o| o.to_f32()).collect()
            };
            for (s, o) in group_scales.iter().zip(&group_offsets) {
                scales.values().append_value(*s);
                offsets.values().append_value(*o);
                zero_points.values().append_value(zero(*s, *o));
            }
            scales.append(true);
            offsets.append(true);
            zero_points.append(true);
            if group_scales.len() == 1 {
                scale.append_value(group_scales[0]);
                zero_point.append_value(zero(group_scales[0], group_offsets[0]));
            } else {
                scale.append_null();
                zero_point.append_null();
            }
        }
        code_offsets.push(i32::try_from(codes.len()).map_err(|_| {
            DataFusionError::Execution("more than 2^31 codes in one batch".to_string())
        })?);
        let denominator = (a_sq.value(row) * b_sq.value(row)).sqrt();
        cosine.append_value(if denominator > 0.0 {
            (dot.value(row) / denominator) as f32
        } else {
            1.0
        });
        bits.push(r.bits);
        group_size.push(r.group_size);
        scheme.push(r.scheme.name());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::clone(batch.column_by_name("layer_name").expect("query column")),
        Arc::new(ListArray::new(
            Arc::new(Field::new_list_field(DataType::Int8, true)),
            OffsetBuffer::new(code_offsets.into()),
            Arc::new(Int8Array::from(codes)),
            Some(NullBuffer::from(code_valid)),
        )),
        Arc::new(scale.finish()),
        Arc::new(zero_point.finish()),
        Arc::clone(
            batch
                .column_by_name("original_shape")
                .expect("query column"),
        ),
        Arc::clone(
            batch
                .column_by_name("compression_ratio")
                .expect("query column"),
        ),
        Arc::new(cosine.finish()),
        Arc::new(scales.finish()),
        Arc::new(zero_points.finish()),
        Arc::new(offsets.finish()),
        Arc::new(UInt8Array::from(bits)),
        Arc::new(UInt32Array::from(group_size)),
        Arc::new(StringArray::from(scheme)),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
