//! The batch API's engine (`quantize_batch_arrow` in Python): a table of layers in — one
//! layer per row, the input schema of the `arrow_quant_v2` API we were asked to build — and
//! that API's output table out, every layer quantized and measured by SQL over DataFusion
//! partitions (codes, scales, ratio and cosine come from registered functions; what is
//! built here is layout).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float32Builder, Int8Array, Int8Builder, Int64Array,
    ListArray, OffsetSizeTrait, RecordBatch, StringArray, UInt8Array, UInt32Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::config::QuantConfig;
use crate::udfs::layout::quantized::QuantizedColumn;

/// Checks the batch API's input schema: layer_name, weights, and optionally shape.
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

/// The batch API's output schema (the `arrow_quant_v2` columns), then the columns group-wise quantization needs.
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
/// builds the batch API's columns: one output batch per partition, in input order.
pub async fn quantize_batch(
    batches: Vec<RecordBatch>,
    schema: SchemaRef,
    has_shape: bool,
    config: &QuantConfig,
) -> Result<Vec<RecordBatch>> {
    check_rows(&batches, has_shape)?;
    let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
    let ctx = SessionContext::new_with_config(
        crate::session::config().with_target_partitions(partitions),
    );
    crate::udfs::register_all(&ctx);
    let numbered_schema = {
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("__row", DataType::Int64, false));
        Arc::new(Schema::new(fields))
    };
    let parts = contiguous_parts(&batches, &numbered_schema, partitions)?;
    ctx.register_table(
        "input",
        Arc::new(MemTable::try_new(numbered_schema, parts)?),
    )?;
    let shape = if has_shape {
        "CAST(shape AS BIGINT[])"
    } else {
        "make_array(CAST(array_length(weights) AS BIGINT))"
    };
    let spec = config
        .spec()
        .map_err(|e| DataFusionError::Plan(e.to_string()))?;
    // quantize_measured reads each layer once: the codes and the sums behind the cosine come
    // from the same pass. No ORDER BY: each partition holds a contiguous run of layers, put
    // back in order below without copying them.
    let sql = format!(
        "SELECT __row, arrow_cast(layer_name, 'Utf8') AS layer_name,
                quantized_codes(m['quantized']) AS quantized_weights, m['quantized'] AS q,
                original_shape,
                CAST(compression_ratio(m['quantized']) AS FLOAT) AS compression_ratio,
                CAST(sums_cosine(m['error_sums']) AS FLOAT) AS cosine_similarity
         FROM (SELECT __row, layer_name, {shape} AS original_shape,
                      quantize_measured(weights, {bits}, {group}, '{scheme}') AS m
               FROM input)",
        bits = spec.bits,
        group = crate::pipeline::plan::group_literal(spec.group),
        scheme = spec.scheme,
    );
    let partitioned = ctx.sql(&sql).await?.collect_partitioned().await?;
    let mut results: Vec<RecordBatch> = partitioned
        .into_iter()
        .flatten()
        .filter(|b| b.num_rows() > 0)
        .collect();
    let first_row = |b: &RecordBatch| {
        b.column_by_name("__row")
            .expect("query column")
            .as_primitive::<Int64Type>()
            .value(0)
    };
    results.sort_by_key(first_row);
    // Each batch must continue where the previous one ended, row after row.
    let mut expected = 0i64;
    for batch in &results {
        let rows = batch
            .column_by_name("__row")
            .expect("query column")
            .as_primitive::<Int64Type>();
        if rows
            .values()
            .iter()
            .enumerate()
            .any(|(i, &r)| r != expected + i as i64)
        {
            return Err(DataFusionError::Internal(
                "batch engine: the layers came back out of order".to_string(),
            ));
        }
        expected += rows.len() as i64;
    }
    // One batch per partition: each core builds the output columns of its own.
    let out_schema = output_schema();
    std::thread::scope(|scope| {
        let workers: Vec<_> = results
            .iter()
            .map(|batch| {
                let schema = Arc::clone(&out_schema);
                scope.spawn(move || output_columns(batch, schema))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(DataFusionError::Internal(
                        "batch engine: building the output columns panicked".to_string(),
                    ))
                })
            })
            .collect()
    })
}

/// Refuses rows that would give a wrong or unnamed answer: a NULL layer name or weights, and a
/// `shape` that is NULL, negative, or whose product is not the number of weights (the output
/// would carry a shape its codes do not fill). Errors name the layer and its input row.
fn check_rows(batches: &[RecordBatch], has_shape: bool) -> Result<()> {
    let mut first_row = 0usize;
    for batch in batches {
        let names = cast(
            batch.column_by_name("layer_name").expect("checked column"),
            &DataType::Utf8,
        )?;
        let names = names.as_string::<i32>();
        let weights = batch.column_by_name("weights").expect("checked column");
        let lengths = list_lengths(weights);
        let shapes = match batch.column_by_name("shape") {
            Some(shape) if has_shape => Some(cast(
                shape,
                &DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
            )?),
            _ => None,
        };
        for (row, &length) in lengths.iter().enumerate() {
            let input_row = first_row + row;
            if names.is_null(row) {
                return Err(DataFusionError::Execution(format!(
                    "input row {input_row}: layer_name is NULL"
                )));
            }
            let layer = names.value(row);
            let bad = |what: String| {
                DataFusionError::Execution(format!(
                    "layer '{layer}' (input row {input_row}): {what}"
                ))
            };
            if weights.is_null(row) {
                return Err(bad("weights is NULL".to_string()));
            }
            let Some(shapes) = &shapes else { continue };
            let shapes = shapes.as_list::<i32>();
            if shapes.is_null(row) {
                return Err(bad("shape is NULL".to_string()));
            }
            let dims = shapes.value(row);
            let dims = dims.as_primitive::<Int64Type>();
            let mut elements: Option<u64> = Some(1);
            for (axis, dim) in dims.iter().enumerate() {
                match dim {
                    Some(d) if d >= 0 => elements = elements.and_then(|e| e.checked_mul(d as u64)),
                    Some(d) => {
                        return Err(bad(format!("shape dimension {axis} is negative ({d})")));
                    }
                    None => return Err(bad(format!("shape dimension {axis} is NULL"))),
                }
            }
            let shape = format!("{:?}", dims.values().to_vec());
            match elements {
                Some(e) if e == length as u64 => {}
                Some(e) => {
                    return Err(bad(format!(
                        "shape {shape} holds {e} values but the row has {length} weights"
                    )));
                }
                None => return Err(bad(format!("shape {shape} overflows 64 bits"))),
            }
        }
        first_row += batch.num_rows();
    }
    Ok(())
}

/// Numbers the layers and cuts them into `partitions` contiguous runs of about equal numbers
/// of weights (slices of the input, not copies), so that every core gets a share.
fn contiguous_parts(
    batches: &[RecordBatch],
    numbered_schema: &SchemaRef,
    partitions: usize,
) -> Result<Vec<Vec<RecordBatch>>> {
    let lengths: Vec<Vec<usize>> = batches
        .iter()
        .map(|b| list_lengths(b.column_by_name("weights").expect("checked column")))
        .collect();
    let total: usize = lengths.iter().flatten().sum();
    let share = total.div_ceil(partitions.max(1)).max(1);
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions.max(1)];
    let (mut row, mut done) = (0i64, 0usize);
    for (batch, lengths) in batches.iter().zip(&lengths) {
        let mut start = 0;
        while start < batch.num_rows() {
            let last = parts.len() - 1;
            let part = (done / share).min(last);
            // The rows that start within this partition's share.
            let mut end = start;
            while end < batch.num_rows() && (done / share).min(last) == part {
                done += lengths[end];
                end += 1;
            }
            let mut columns: Vec<ArrayRef> = batch.slice(start, end - start).columns().to_vec();
            columns.push(Arc::new(Int64Array::from_iter_values(
                row..row + (end - start) as i64,
            )));
            parts[part].push(RecordBatch::try_new(Arc::clone(numbered_schema), columns)?);
            row += (end - start) as i64;
            start = end;
        }
    }
    Ok(parts)
}

/// Values in each row of a list column (0 for NULL rows).
fn list_lengths(array: &ArrayRef) -> Vec<usize> {
    fn of<O: OffsetSizeTrait>(array: &ArrayRef) -> Vec<usize> {
        let offsets = array.as_list::<O>().value_offsets();
        offsets
            .windows(2)
            .map(|w| (w[1] - w[0]).as_usize())
            .collect()
    }
    match array.data_type() {
        DataType::List(_) => of::<i32>(array),
        DataType::LargeList(_) => of::<i64>(array),
        DataType::FixedSizeList(_, n) => vec![*n as usize; array.len()],
        _ => vec![1; array.len()],
    }
}

/// A list column over `values`, row `i` ending at `ends[i + 1]`.
fn list_of(ends: &[i32], values: ArrayRef) -> ArrayRef {
    let item = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    Arc::new(ListArray::new(
        item,
        OffsetBuffer::new(ends.to_vec().into()),
        values,
        None,
    ))
}

/// The batch API's per-layer view of each quantized struct: signed codes (code − 2^(bits−1)), one
/// scale and zero point when the layer has one group, every group's in the added list columns.
fn output_columns(batch: &RecordBatch, schema: SchemaRef) -> Result<RecordBatch> {
    let q = batch.column_by_name("q").expect("query column");
    let quantized = QuantizedColumn::new(q)?;
    let rows = batch.num_rows();
    let mut scale = Float32Builder::with_capacity(rows);
    let mut zero_point = Int8Builder::with_capacity(rows);
    // Per-group columns, built as plain vectors: a million groups take milliseconds.
    let groups: usize = (0..rows)
        .filter_map(|r| quantized.get(r).ok().flatten())
        .map(|r| r.scales.len())
        .sum();
    let mut group_scales: Vec<f32> = Vec::with_capacity(groups);
    let mut group_offsets: Vec<f32> = Vec::with_capacity(groups);
    let mut group_zeros: Vec<i8> = Vec::with_capacity(groups);
    let mut group_ends: Vec<i32> = Vec::with_capacity(rows + 1);
    group_ends.push(0);
    let mut bits = Vec::with_capacity(rows);
    let mut group_size = Vec::with_capacity(rows);
    let mut scheme = Vec::with_capacity(rows);
    for row in 0..rows {
        let Some(r) = quantized.get(row).map_err(DataFusionError::Execution)? else {
            return Err(DataFusionError::Execution(format!(
                "layer {row}: no quantized value"
            )));
        };
        let first = group_scales.len();
        r.append_group_parameters(&mut group_scales, &mut group_offsets, &mut group_zeros);
        group_ends.push(group_scales.len() as i32);
        if group_scales.len() - first == 1 {
            scale.append_value(group_scales[first]);
            zero_point.append_value(group_zeros[first]);
        } else {
            scale.append_null();
            zero_point.append_null();
        }
        bits.push(r.bits);
        group_size.push(r.group_size);
        scheme.push(r.scheme.name());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::clone(batch.column_by_name("layer_name").expect("query column")),
        // The codes as quantized_codes built them: no copy.
        Arc::clone(
            batch
                .column_by_name("quantized_weights")
                .expect("query column"),
        ),
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
        Arc::clone(
            batch
                .column_by_name("cosine_similarity")
                .expect("query column"),
        ),
        list_of(&group_ends, Arc::new(Float32Array::from(group_scales))),
        list_of(&group_ends, Arc::new(Int8Array::from(group_zeros))),
        list_of(&group_ends, Arc::new(Float32Array::from(group_offsets))),
        Arc::new(UInt8Array::from(bits)),
        Arc::new(UInt32Array::from(group_size)),
        Arc::new(StringArray::from(scheme)),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;

    fn layers(sizes: &[usize]) -> RecordBatch {
        let values: Vec<f32> = (0..sizes.iter().sum::<usize>()).map(|i| i as f32).collect();
        let offsets = OffsetBuffer::from_lengths(sizes.iter().copied());
        let weights = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Float32, true)),
            offsets,
            Arc::new(Float32Array::from(values)),
            None,
        );
        let names: Vec<String> = (0..sizes.len()).map(|i| format!("layer.{i}")).collect();
        RecordBatch::try_from_iter(vec![
            ("layer_name", Arc::new(StringArray::from(names)) as ArrayRef),
            ("weights", Arc::new(weights) as ArrayRef),
        ])
        .unwrap()
    }

    fn numbered(batch: &RecordBatch) -> SchemaRef {
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("__row", DataType::Int64, false));
        Arc::new(Schema::new(fields))
    }

    fn rows_of(parts: &[Vec<RecordBatch>]) -> Vec<Vec<i64>> {
        parts
            .iter()
            .map(|p| {
                p.iter()
                    .flat_map(|b| {
                        b.column_by_name("__row")
                            .unwrap()
                            .as_primitive::<Int64Type>()
                            .values()
                            .to_vec()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn partitions_are_contiguous_runs_of_equal_weight() {
        let a = layers(&[10, 10, 10, 10]);
        let b = layers(&[40, 5, 5]);
        let parts = contiguous_parts(&[a.clone(), b], &numbered(&a), 2).unwrap();
        // 90 values: the first 45 go to partition 0.
        assert_eq!(rows_of(&parts), vec![vec![0, 1, 2, 3, 4], vec![5, 6]]);
        // More partitions than layers: the extra ones stay empty.
        let parts = contiguous_parts(std::slice::from_ref(&a), &numbered(&a), 8).unwrap();
        let rows = rows_of(&parts);
        assert_eq!(rows.concat(), vec![0, 1, 2, 3]);
        assert!(rows.iter().all(|r| r.len() <= 1));
    }

    /// DataFusion 55's leaf-expression pushdown would turn each field read of
    /// `quantize_measured(...)` into a call of its own (see session::config).
    #[tokio::test]
    async fn quantize_measured_runs_once_per_row_whatever_fields_are_read() {
        let ctx = crate::session::context();
        let input = layers(&[256, 256]);
        ctx.register_batch("input", input).unwrap();
        let plan = ctx
            .sql(
                "EXPLAIN SELECT quantized_codes(m['quantized']), m['quantized'], m['error_sums']
                 FROM (SELECT quantize_measured(weights, 4) AS m FROM input)",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        let physical = &text[text.find("physical_plan").unwrap()..];
        assert_eq!(physical.matches("quantize_measured(").count(), 1, "{text}");
    }

    /// A batch of two 4-value layers with the given shapes (NULL where `None`).
    fn shaped(shapes: Vec<Option<Vec<Option<i64>>>>) -> RecordBatch {
        let input = layers(&[4, 4]);
        let shape = ListArray::from_iter_primitive::<Int64Type, _, _>(shapes);
        let mut columns = input.columns().to_vec();
        columns.push(Arc::new(shape));
        let mut fields: Vec<Field> = input
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("shape", columns[2].data_type().clone(), true));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    #[tokio::test]
    async fn rows_whose_shape_or_name_would_mislead_are_refused_by_name() {
        let config = QuantConfig::default();
        let run = |batch: RecordBatch| {
            let config = config.clone();
            async move {
                quantize_batch(vec![batch.clone()], batch.schema(), true, &config)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        let ok = shaped(vec![Some(vec![Some(2), Some(2)]), Some(vec![Some(4)])]);
        run(ok).await.unwrap();
        let cases = [
            (
                shaped(vec![
                    Some(vec![Some(4)]),
                    Some(vec![Some(3), Some(1_000_000_000_000)]),
                ]),
                "layer 'layer.1' (input row 1): shape [3, 1000000000000] holds 3000000000000 values but the row has 4 weights",
            ),
            (
                shaped(vec![Some(vec![Some(-4)]), Some(vec![Some(4)])]),
                "layer 'layer.0' (input row 0): shape dimension 0 is negative (-4)",
            ),
            (
                shaped(vec![Some(vec![Some(4)]), None]),
                "layer 'layer.1' (input row 1): shape is NULL",
            ),
            (
                shaped(vec![Some(vec![Some(4)]), Some(vec![None])]),
                "layer 'layer.1' (input row 1): shape dimension 0 is NULL",
            ),
            (
                shaped(vec![
                    Some(vec![Some(4)]),
                    Some(vec![Some(1 << 40), Some(1 << 40)]),
                ]),
                "overflows 64 bits",
            ),
        ];
        for (batch, expected) in cases {
            let error = run(batch).await.unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        // NULL names and weights.
        let input = layers(&[4, 4]);
        let names = Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef;
        let batch = RecordBatch::try_from_iter(vec![
            ("layer_name", names),
            ("weights", input.column(1).clone()),
        ])
        .unwrap();
        let error = quantize_batch(vec![batch.clone()], batch.schema(), false, &config)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("input row 1: layer_name is NULL"), "{error}");
        let weights =
            ListArray::from_iter_primitive::<datafusion::arrow::datatypes::Float32Type, _, _>(
                vec![Some(vec![Some(1.0), Some(2.0)]), None],
            );
        let schema = Arc::new(Schema::new(vec![
            Field::new("layer_name", DataType::Utf8, true),
            Field::new("weights", weights.data_type().clone(), true),
        ]));
        let names = Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef;
        let batch = RecordBatch::try_new(schema, vec![names, Arc::new(weights)]).unwrap();
        let error = quantize_batch(vec![batch.clone()], batch.schema(), false, &config)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("layer 'b' (input row 1): weights is NULL"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn layers_come_back_in_input_order_with_their_cosines() {
        let sizes: Vec<usize> = (0..9).map(|i| 256 * (1 + i % 4)).collect();
        let input = layers(&sizes);
        let config = QuantConfig::default();
        let out = quantize_batch(vec![input.clone()], input.schema(), false, &config)
            .await
            .unwrap();
        let names: Vec<String> = out
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let expected: Vec<String> = (0..9).map(|i| format!("layer.{i}")).collect();
        assert_eq!(names, expected);
        for batch in &out {
            let codes = batch.column(1).as_list::<i32>();
            let cosine = batch
                .column(6)
                .as_primitive::<datafusion::arrow::datatypes::Float32Type>();
            for row in 0..batch.num_rows() {
                assert!(cosine.value(row) > 0.99, "{}", cosine.value(row));
                assert!(codes.value(row).len() >= 256);
            }
        }
    }
}
