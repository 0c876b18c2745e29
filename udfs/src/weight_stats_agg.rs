//! `weight_stats_agg(weights)`: the distribution of a whole tensor, over its rows.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Documentation, Signature};

use crate::kernels::error::check_finite;
use crate::kernels::sketch::Sketch;
use crate::kernels::stats::{Moments, OUTLIER_SIGMAS};
use crate::layout::stats::{StatsBuilder, stats_fields};
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters};
use crate::support::args::{FloatRows, row_error};
use crate::support::doc::DOC_STATISTICS;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct WeightStatsAgg {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_STATISTICS,
        "Statistics of a whole tensor over its rows, with the fields of weight_stats. Moments \
         merge exactly across partitions (Pébay's formulas); outlier_ratio is read from a \
         mergeable histogram sketch and is exact up to its 0.4 % bucket width. NULL rows are \
         skipped; NULL when there are no values; NaN or ±Inf values are an error.",
        "weight_stats_agg(weights)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, weight_stats_agg(weights)['std'] FROM layers GROUP BY layer;\n```",
    )
    .with_argument(
        "weights",
        "List of Float16, Float32 or Float64: the rows of a tensor.",
    )
    .with_related_udf("weight_stats")
    .build()
});

const STATE: [&str; 7] = ["n", "mean", "m2", "m3", "m4", "min", "max"];

const PARAMETERS: Parameters = Parameters::new(&[("weights", ArgType::FloatList)], 1);

impl AggregateUDFImpl for WeightStatsAgg {
    fn name(&self) -> &str {
        "weight_stats_agg"
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

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(StatsAccumulator::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let mut fields: Vec<FieldRef> = STATE
            .iter()
            .map(|n| {
                Arc::new(Field::new(
                    format_state_name(args.name, n),
                    DataType::Float64,
                    true,
                ))
            })
            .collect();
        fields.push(Arc::new(Field::new(
            format_state_name(args.name, "sketch"),
            DataType::Binary,
            true,
        )));
        Ok(fields)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[derive(Debug, Default)]
struct StatsAccumulator {
    moments: Moments,
    sketch: Sketch,
}

impl Accumulator for StatsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = FloatRows::new(&values[0], "weight_stats_agg", "weights")?;
        for row in 0..rows.len() {
            if let Some(x) = rows.row(row) {
                check_finite(x).map_err(|e| row_error("weight_stats_agg", row, e))?;
                self.moments.merge(&Moments::of(x));
                self.sketch.add(x);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let m = &self.moments;
        let mut out = StatsBuilder::with_capacity(1);
        if m.n == 0.0 {
            out.append_null();
        } else {
            let outliers = self.sketch.share_beyond(m.mean, OUTLIER_SIGMAS * m.std());
            out.append(
                m.n as u64,
                [
                    m.min,
                    m.max,
                    m.mean,
                    m.std(),
                    m.absmax(),
                    m.kurtosis(),
                    outliers,
                ],
            );
        }
        Ok(ScalarValue::Struct(Arc::new(out.finish())))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sketch.heap_bytes()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let m = &self.moments;
        let mut state: Vec<ScalarValue> = [m.n, m.mean, m.m2, m.m3, m.m4, m.min, m.max]
            .iter()
            .map(|&v| ScalarValue::Float64(Some(v)))
            .collect();
        state.push(ScalarValue::Binary(Some(self.sketch.to_bytes())));
        Ok(state)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let f: Vec<_> = states[..7]
            .iter()
            .map(|a| a.as_primitive::<datafusion::arrow::datatypes::Float64Type>())
            .collect();
        let sketches = states[7].as_binary::<i32>();
        for row in 0..sketches.len() {
            if f[0].is_null(row) || sketches.is_null(row) {
                continue;
            }
            self.moments.merge(&Moments {
                n: f[0].value(row),
                mean: f[1].value(row),
                m2: f[2].value(row),
                m3: f[3].value(row),
                m4: f[4].value(row),
                min: f[5].value(row),
                max: f[6].value(row),
            });
            let sketch = Sketch::from_bytes(sketches.value(row))
                .map_err(|e| exec_datafusion_err!("weight_stats_agg: {e}"))?;
            self.sketch.merge(&sketch);
        }
        Ok(())
    }
}

crate::support::register::aggregate_udf!(WeightStatsAgg::default());
