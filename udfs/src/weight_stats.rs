//! `weight_stats(weights)`: the distribution of one row.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::error::check_finite;
use crate::kernels::stats::RowStats;
use crate::layout::stats::{StatsBuilder, stats_fields};
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters};
use crate::support::args::{FloatRows, row_error};
use crate::support::doc::DOC_STATISTICS;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct WeightStats {
    signature: UserDefined,
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

const PARAMETERS: Parameters = Parameters::new(&[("weights", ArgType::FloatList)], 1);

impl ScalarUDFImpl for WeightStats {
    fn name(&self) -> &str {
        "weight_stats"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        PARAMETERS.coerce(self.name(), arg_types)
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

crate::support::register::scalar_udf!(WeightStats::default());
