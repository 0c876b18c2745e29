//! `weight_stats(weights)`: the distribution of one row.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float64Builder, StructArray, UInt64Builder};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::common::{FloatRows, check_arity, coerce_float_list, row_error};
use crate::doc::DOC_STATISTICS;
use crate::kernels::error::check_finite;
use crate::kernels::stats::RowStats;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WeightStats {
    signature: Signature,
}

impl Default for WeightStats {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

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

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_STATISTICS,
        "Statistics of one row: {count, min, max, mean, std (population), absmax, kurtosis \
         (excess: 0 for a Gaussian, NULL for constant rows), outlier_ratio (share of values more \
         than 3σ from the mean)}. NULL for NULL or empty rows; NaN or ±Inf values are an error.",
        "weight_stats(weights)",
    )
    .with_sql_example("```sql\n> SELECT layer, max(weight_stats(weights)['kurtosis']) FROM layers GROUP BY layer;\n```")
    .with_argument("weights", "List of Float16, Float32 or Float64.")
    .with_related_udf("weight_stats_agg")
    .build()
});

impl ScalarUDFImpl for WeightStats {
    fn name(&self) -> &str {
        "weight_stats"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        check_arity(self.name(), "(weights)", arg_types.len(), 1, 1)?;
        Ok(vec![coerce_float_list(
            self.name(),
            "weights",
            &arg_types[0],
        )?])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(stats_fields()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let weights = args.args[0].to_array(args.number_rows)?;
        let rows = FloatRows::new(&weights, self.name(), "weights")?;
        let mut out = StatsBuilder::with_capacity(rows.len());
        for row in 0..rows.len() {
            match rows.row(row) {
                Some(x) if !x.is_empty() => {
                    check_finite(x).map_err(|e| row_error(self.name(), row, e))?;
                    let s = RowStats::of(x);
                    let m = &s.moments;
                    out.append(
                        x.len() as u64,
                        [
                            m.min,
                            m.max,
                            m.mean,
                            m.std(),
                            m.absmax(),
                            m.kurtosis(),
                            s.outlier_ratio,
                        ],
                    );
                }
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}
