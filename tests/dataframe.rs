//! The functions from Rust: `register_all` on a plain session, the DataFrame `Expr` helpers,
//! and aggregates merged across partitions.

use std::sync::Arc;

use arrowquant_udfs::functions::{
    cosine_similarity, dequantize, quant_params, quantize, tensor_cosine, weight_stats_agg,
};
use datafusion::arrow::array::{
    Array, AsArray, Float32Builder, ListBuilder, RecordBatch, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::*;

fn batch(layers: &[&str], rows_per_layer: usize, len: usize, seed: u32) -> RecordBatch {
    let mut layer = StringBuilder::new();
    let mut weights = ListBuilder::new(Float32Builder::new());
    for (l, name) in layers.iter().enumerate() {
        for r in 0..rows_per_layer {
            layer.append_value(name);
            for i in 0..len {
                let t = (seed as usize * 7919 + l * 104_729 + r * 1_009 + i) as f32;
                weights.values().append_value((t * 0.618).sin() * 0.05);
            }
            weights.append(true);
        }
    }
    let schema = Schema::new(vec![
        Field::new("layer", DataType::Utf8, false),
        Field::new("weights", DataType::new_list(DataType::Float32, true), true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(layer.finish()), Arc::new(weights.finish())],
    )
    .unwrap()
}

fn context_with(partitions: Vec<Vec<RecordBatch>>) -> SessionContext {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(4));
    arrowquant_udfs::register_all(&ctx);
    let schema = partitions[0][0].schema();
    ctx.register_table(
        "layers",
        Arc::new(MemTable::try_new(schema, partitions).unwrap()),
    )
    .unwrap();
    ctx
}

#[tokio::test]
async fn dataframe_helpers_quantize_and_check() {
    let ctx = context_with(vec![vec![batch(&["a", "b"], 8, 256, 1)]]);
    let df = ctx
        .table("layers")
        .await
        .unwrap()
        .select(vec![
            col("layer"),
            cosine_similarity(col("weights"), dequantize(quantize(col("weights"), lit(4))))
                .alias("cos"),
        ])
        .unwrap();
    let batches = df.collect().await.unwrap();
    let mut n = 0;
    for b in &batches {
        let cos = b.column(1).as_primitive::<Float64Type>();
        for c in cos.iter() {
            assert!(c.unwrap() > 0.99, "{c:?}");
            n += 1;
        }
    }
    assert_eq!(n, 16);
}

/// The aggregates' states merge exactly: four partitions give what one partition gives.
#[tokio::test]
async fn aggregates_agree_across_partitions() {
    let parts: Vec<RecordBatch> = (0..4).map(|p| batch(&["a", "b"], 5, 128, p)).collect();
    let one = context_with(vec![parts.clone()]);
    let four = context_with(parts.into_iter().map(|b| vec![b]).collect());
    let query = |ctx: SessionContext| async move {
        ctx.table("layers")
            .await
            .unwrap()
            .aggregate(
                vec![col("layer")],
                vec![
                    quant_params(col("weights"), lit(4)).alias("p"),
                    weight_stats_agg(col("weights")).alias("s"),
                    tensor_cosine(col("weights"), dequantize(quantize(col("weights"), lit(8))))
                        .alias("c"),
                ],
            )
            .unwrap()
            .sort(vec![col("layer").sort(true, false)])
            .unwrap()
            .collect()
            .await
            .unwrap()
    };
    let (a, b) = (query(one).await, query(four).await);
    let concat = |batches: &[RecordBatch]| {
        datafusion::arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap()
    };
    let (a, b) = (concat(&a), concat(&b));
    assert_eq!(a.num_rows(), 2);
    // The sketch merge is exact, so the chosen parameters are identical.
    let scale = |r: &RecordBatch| {
        r.column(1)
            .as_struct()
            .column_by_name("scale")
            .unwrap()
            .as_primitive::<Float32Type>()
            .clone()
    };
    assert_eq!(scale(&a), scale(&b));
    // Moments and sums merge up to floating-point reassociation.
    for (col, field) in [(2, "mean"), (2, "std"), (2, "kurtosis")] {
        let get = |r: &RecordBatch| {
            r.column(col)
                .as_struct()
                .column_by_name(field)
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone()
        };
        for (x, y) in get(&a).iter().zip(get(&b).iter()) {
            let (x, y) = (x.unwrap(), y.unwrap());
            assert!(
                (x - y).abs() <= 1e-9 * x.abs().max(1e-6),
                "{field}: {x} vs {y}"
            );
        }
    }
    let cos = |r: &RecordBatch| r.column(3).as_primitive::<Float64Type>().clone();
    for (x, y) in cos(&a).iter().zip(cos(&b).iter()) {
        assert!((x.unwrap() - y.unwrap()).abs() < 1e-12);
    }
    assert_eq!(
        a.column(2)
            .as_struct()
            .column_by_name("count")
            .unwrap()
            .len(),
        2
    );
}
