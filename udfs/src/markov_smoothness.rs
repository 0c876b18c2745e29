//! `markov_smoothness(scale) OVER (PARTITION BY layer ORDER BY tg)`: Phase 1 of the
//! thermodynamic constraint system, the relative change of a group's scale to the next group's.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float64Array};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::{Documentation, PartitionEvaluator, Signature, WindowUDFImpl};
use datafusion_functions_window_common::field::WindowUDFFieldArgs;
use datafusion_functions_window_common::partition::PartitionEvaluatorArgs;

use crate::kernels::thermo::markov_smoothness;
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters};
use crate::support::doc::DOC_THERMODYNAMIC;
use crate::support::window::{float_values, partition_error, result_field};

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct MarkovSmoothness {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_THERMODYNAMIC,
        "Markov smoothness of a chain of timestep groups: |s(t+1) − s(t)| / s(t), the relative \
         change of the scale from this row to the next row of the ordered partition. NULL on \
         the last row (no next group, so also on a partition of one group) and where either \
         scale is NULL; a scale that is zero, negative, NaN or infinite is an error.",
        "markov_smoothness(scale) OVER (PARTITION BY layer ORDER BY tg)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, tg, markov_smoothness(scale) OVER (PARTITION BY layer ORDER BY tg)\n  FROM group_params;\n```",
    )
    .with_argument("scale", "Positive scale of each group.")
    .with_related_udf("markov_violation")
    .build()
});

const PARAMETERS: Parameters = Parameters::new(&[("scale", ArgType::Float)], 1);

impl WindowUDFImpl for MarkovSmoothness {
    fn name(&self) -> &str {
        "markov_smoothness"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        PARAMETERS.coerce(self.name(), arg_types)
    }

    fn partition_evaluator(
        &self,
        _args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(SmoothnessEvaluator))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        result_field(&field_args, DataType::Float64)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[derive(Debug)]
struct SmoothnessEvaluator;

impl PartitionEvaluator for SmoothnessEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], _num_rows: usize) -> Result<ArrayRef> {
        let scales = float_values(&values[0])?;
        let out =
            markov_smoothness(&scales).map_err(|e| partition_error("markov_smoothness", e))?;
        Ok(Arc::new(Float64Array::from(out)))
    }
}

crate::support::register::window_udf!(MarkovSmoothness::default());
