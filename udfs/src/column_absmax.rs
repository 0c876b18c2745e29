//! `column_absmax(weights [, channels])`: per-input-channel absolute maxima of a tensor, over
//! all its rows.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Documentation, Signature};

use crate::kernels::spatial::{channel_width, fold_absmax};
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters};
use crate::support::args::{
    FloatRows, constant_value, float32_list, float32_list_builder, row_error,
};
use crate::support::doc::DOC_SPATIAL;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct ColumnAbsmax {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SPATIAL,
        "Per-input-channel absolute maxima of a tensor: the maximum |w| of each column over \
         all rows, or, with channels, of each of the channels consecutive runs of a row (a \
         conv row of in_channels × kh × kw values with channels = in_channels). Rows of \
         different lengths, rows that do not split into channels, and NaN/±Inf are errors; \
         NULL rows are skipped; NULL when there are none.",
        "column_absmax(weights [, channels])",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, column_absmax(weights) FROM read_safetensors('model.safetensors')\n  WHERE layer LIKE '%to_q.weight' GROUP BY layer;\n```",
    )
    .with_argument("weights", "The tensor's rows: lists of floats.")
    .with_argument("channels", "Number of input channels per row, a constant (default: one per column).")
    .with_related_udf("smooth_scales")
    .build()
});

const PARAMETERS: Parameters = Parameters::new(
    &[
        ("weights", ArgType::FloatList),
        ("channels", ArgType::Integer),
    ],
    1,
);

impl AggregateUDFImpl for ColumnAbsmax {
    fn name(&self) -> &str {
        "column_absmax"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        PARAMETERS.coerce(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(float32_list())
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let channels = match args.exprs.get(1) {
            None => None,
            Some(expr) => match constant_value(expr) {
                Some(ScalarValue::Int64(Some(c))) if c >= 1 => Some(c as usize),
                other => {
                    return plan_err!(
                        "column_absmax: argument 'channels' must be a constant ≥ 1, got {other:?}"
                    );
                }
            },
        };
        Ok(Box::new(AbsmaxAccumulator {
            channels,
            maxima: None,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "maxima"),
            float32_list(),
            true,
        ))])
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[derive(Debug)]
struct AbsmaxAccumulator {
    channels: Option<usize>,
    maxima: Option<Vec<f32>>,
}

impl AbsmaxAccumulator {
    fn as_scalar(&self) -> ScalarValue {
        let mut out = float32_list_builder(1);
        match &self.maxima {
            Some(m) => {
                out.values().append_slice(m);
                out.append(true);
            }
            None => out.append(false),
        }
        ScalarValue::List(Arc::new(out.finish()))
    }

    /// The maxima a row of `len` values folds into, created by the first row.
    fn maxima_for(&mut self, len: usize) -> std::result::Result<&mut Vec<f32>, String> {
        if let Some(channels) = self.channels {
            // Checked before the maxima are sized by it: channels is the caller's number.
            channel_width(len, channels).map_err(|e| e.to_string())?;
        }
        let width = self.channels.unwrap_or(len);
        let maxima = self.maxima.get_or_insert_with(|| vec![0.0; width]);
        if self.channels.is_none() && maxima.len() != len {
            return Err(format!(
                "row of {len} values, but earlier rows have {} (give channels to fold columns)",
                maxima.len()
            ));
        }
        Ok(maxima)
    }
}

impl Accumulator for AbsmaxAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = FloatRows::new(&values[0], "column_absmax", "weights")?;
        for row in 0..rows.len() {
            if let Some(values) = rows.row(row) {
                let fail = |e: String| row_error("column_absmax", row, e);
                let maxima = self.maxima_for(values.len()).map_err(fail)?;
                fold_absmax(maxima, values).map_err(|e| fail(e.to_string()))?;
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let rows = FloatRows::new(&states[0], "column_absmax", "state")?;
        for row in 0..rows.len() {
            if let Some(other) = rows.row(row) {
                let maxima = self.maxima.get_or_insert_with(|| vec![0.0; other.len()]);
                if maxima.len() != other.len() {
                    return Err(exec_datafusion_err!(
                        "column_absmax: partitions saw rows of {} and {} channels",
                        maxima.len(),
                        other.len()
                    ));
                }
                for (m, o) in maxima.iter_mut().zip(other) {
                    *m = m.max(*o);
                }
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.as_scalar()])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.as_scalar())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.maxima.as_ref().map_or(0, |m| m.capacity() * 4)
    }
}

crate::support::register::aggregate_udf!(ColumnAbsmax::default());
