//! `markov_smoothness(scale) OVER (PARTITION BY layer ORDER BY tg)`: Phase 1 of the
//! thermodynamic constraint system, the relative change of a group's scale to the next group's.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::{Documentation, PartitionEvaluator, Signature, WindowUDFImpl};
use datafusion_functions_window_common::field::WindowUDFFieldArgs;
use datafusion_functions_window_common::partition::PartitionEvaluatorArgs;

use crate::kernels::thermo::markov_smoothness;
use crate::support::args::UserDefined;
use crate::support::args::{check_arity, coerce_float};
use crate::support::doc::DOC_THERMODYNAMIC;
use crate::support::window::{float_values, partition_error};

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

impl WindowUDFImpl for MarkovSmoothness {
    fn name(&self) -> &str {
        "markov_smoothness"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        check_arity(self.name(), "(scale)", arg_types.len(), 1, 1)?;
        Ok(vec![coerce_float(self.name(), "scale", &arg_types[0])?])
    }

    fn partition_evaluator(
        &self,
        _args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(SmoothnessEvaluator))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            field_args.name(),
            DataType::Float64,
            true,
        )))
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
