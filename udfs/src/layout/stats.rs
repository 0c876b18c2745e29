//! The statistics struct, `{count, min, max, mean, std, absmax, kurtosis, outlier_ratio}`:
//! what `weight_stats` and `weight_stats_agg` return.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Builder, StructArray, UInt64Builder};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields};

/// The Float64 figures of the stats struct, after its `count`.
pub const FIGURES: [&str; 7] = [
    "min",
    "max",
    "mean",
    "std",
    "absmax",
    "kurtosis",
    "outlier_ratio",
];

/// `{count: UInt64, min, max, mean, std, absmax, kurtosis, outlier_ratio: Float64}`.
pub fn stats_fields() -> Fields {
    std::iter::once(Field::new("count", DataType::UInt64, true))
        .chain(
            FIGURES
                .iter()
                .map(|n| Field::new(*n, DataType::Float64, true)),
        )
        .collect()
}

/// Builds a column of stats structs (shared with `weight_stats_agg`).
pub struct StatsBuilder {
    count: UInt64Builder,
    figures: Vec<Float64Builder>,
    valid: Vec<bool>,
}

impl StatsBuilder {
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            count: UInt64Builder::with_capacity(rows),
            figures: FIGURES
                .iter()
                .map(|_| Float64Builder::with_capacity(rows))
                .collect(),
            valid: Vec::with_capacity(rows),
        }
    }

    pub fn append(&mut self, count: u64, figures: [f64; 7]) {
        self.count.append_value(count);
        for (b, v) in self.figures.iter_mut().zip(figures) {
            b.append_option((!v.is_nan()).then_some(v));
        }
        self.valid.push(true);
    }

    pub fn append_null(&mut self) {
        self.count.append_null();
        self.figures.iter_mut().for_each(|b| b.append_null());
        self.valid.push(false);
    }

    pub fn finish(mut self) -> StructArray {
        let columns: Vec<ArrayRef> = std::iter::once(Arc::new(self.count.finish()) as ArrayRef)
            .chain(
                self.figures
                    .iter_mut()
                    .map(|b| Arc::new(b.finish()) as ArrayRef),
            )
            .collect();
        let nulls = NullBuffer::from(self.valid);
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        StructArray::new(stats_fields(), columns, nulls)
    }
}
