//! The batch API's engine driven from Rust: 100 layers of 4 MB (1,048,576 f32 values each,
//! Gaussian), quantized and measured in one call of `arrowquant::pipeline::batch::quantize_batch` — the
//! work `ArrowQuantV2.quantize_batch_arrow` does behind the Python boundary
//! (benches/python_batch.py measures that call on the same sizes and settings).
//!
//! Run: `cargo bench --bench batch`. `baseline/copy` (a plain copy of the 400 MB) is measured in
//! the same run.

use std::hint::black_box;
use std::sync::Arc;

use arrowquant::config::{QuantConfig, Settings, Value};
use arrowquant::pipeline::batch::quantize_batch;
use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::arrow::array::{ArrayRef, Float32Array, ListArray, RecordBatch, StringArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

pub const LAYERS: usize = 100;
pub const LAYER_VALUES: usize = 1 << 20;

fn layers() -> RecordBatch {
    let mut rng = StdRng::seed_from_u64(7);
    let normal = Normal::new(0.0f32, 0.02).unwrap();
    let values: Vec<f32> = (0..LAYERS * LAYER_VALUES)
        .map(|_| normal.sample(&mut rng))
        .collect();
    let item = Arc::new(Field::new_list_field(DataType::Float32, true));
    let weights = ListArray::new(
        Arc::clone(&item),
        OffsetBuffer::from_lengths(std::iter::repeat_n(LAYER_VALUES, LAYERS)),
        Arc::new(Float32Array::from(values)),
        None,
    );
    let names = StringArray::from_iter_values((0..LAYERS).map(|i| format!("layer.{i}.weight")));
    let schema = Arc::new(Schema::new(vec![
        Field::new("layer_name", DataType::Utf8, false),
        Field::new("weights", DataType::List(item), true),
    ]));
    let columns: Vec<ArrayRef> = vec![Arc::new(names), Arc::new(weights)];
    RecordBatch::try_new(schema, columns).unwrap()
}

fn config(bits: i64, group: &str, scheme: &str) -> QuantConfig {
    let mut s = Settings::new("bench");
    s.set("bit_width", Value::Int(bits));
    s.set("group_size", Value::Text(group.into()));
    s.set("scheme", Value::Text(scheme.into()));
    QuantConfig::resolve(&Settings::new("environment"), None, &s).unwrap()
}

fn benches(c: &mut Criterion) {
    let batch = layers();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("batch_100x4mb");
    group.sample_size(10);
    let values = batch.column(1).clone();
    group.bench_function("baseline/copy", |b| {
        b.iter(|| {
            let list = values.as_any().downcast_ref::<ListArray>().unwrap();
            let floats = list
                .values()
                .as_any()
                .downcast_ref::<Float32Array>()
                .unwrap();
            black_box(floats.values().to_vec())
        })
    });
    for (name, bits, group_size, scheme) in [
        ("q4_0", 4, "32", "q4_0"),
        ("int4_g64_minmax", 4, "64", "asym_minmax"),
        ("int4_g64_search", 4, "64", "asym"),
        ("int8_g64_search", 8, "64", "asym"),
    ] {
        let config = config(bits, group_size, scheme);
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = runtime
                    .block_on(quantize_batch(
                        vec![batch.clone()],
                        batch.schema(),
                        false,
                        &config,
                    ))
                    .unwrap();
                assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), LAYERS);
                black_box(out)
            })
        });
    }
    group.finish();
}

criterion_group!(batch_benches, benches);
criterion_main!(batch_benches);
