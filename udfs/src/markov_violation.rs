//! `markov_violation(scale [, threshold]) OVER (PARTITION BY layer ORDER BY tg)`: whether the
//! scale changes by more than `threshold` (relative) from this group to the next.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{Documentation, PartitionEvaluator, Signature, WindowUDFImpl};
use datafusion_functions_window_common::field::WindowUDFFieldArgs;
use datafusion_functions_window_common::partition::PartitionEvaluatorArgs;

use crate::kernels::thermo::markov_smoothness;
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters};
use crate::support::doc::DOC_THERMODYNAMIC;
use crate::support::window::{constant_f64, float_values, partition_error, result_field};

/// The threshold of the architecture we were asked to build (`arrow_quant_v2`): a jump of more than a quarter of the scale.
pub const DEFAULT_THRESHOLD: f64 = 0.25;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct MarkovViolation {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_THERMODYNAMIC,
        "True where markov_smoothness(scale) exceeds threshold (default 0.25): the scale jumps \
         by more than that fraction from this group to the next. NULL where markov_smoothness \
         is NULL (the last row, NULL scales); non-positive or non-finite scales are an error. \
         Count violations with COUNT(*) FILTER (WHERE v) or SUM(CAST(v AS INT)).",
        "markov_violation(scale [, threshold]) OVER (PARTITION BY layer ORDER BY tg)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, tg, markov_violation(scale, 0.25) OVER (PARTITION BY layer ORDER BY tg)\n  FROM group_params;\n```",
    )
    .with_argument("scale", "Positive scale of each group.")
    .with_argument("threshold", "Largest relative change that is not a violation, a constant ≥ 0 (default 0.25).")
    .with_related_udf("markov_smoothness")
    .build()
});

const PARAMETERS: Parameters = Parameters::new(
    &[("scale", ArgType::Float), ("threshold", ArgType::Float)],
    1,
);

impl WindowUDFImpl for MarkovViolation {
    fn name(&self) -> &str {
        "markov_violation"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        PARAMETERS.coerce(self.name(), arg_types)
    }

    fn partition_evaluator(
        &self,
        args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        let threshold = constant_f64(&args, self.name(), "threshold", 1, DEFAULT_THRESHOLD)?;
        if !(threshold.is_finite() && threshold >= 0.0) {
            return plan_err!(
                "{}: argument 'threshold' must be a finite number ≥ 0, got {threshold}",
                self.name()
            );
        }
        Ok(Box::new(ViolationEvaluator { threshold }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        result_field(&field_args, DataType::Boolean)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[derive(Debug)]
struct ViolationEvaluator {
    threshold: f64,
}

impl PartitionEvaluator for ViolationEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], _num_rows: usize) -> Result<ArrayRef> {
        let scales = float_values(&values[0])?;
        let smoothness =
            markov_smoothness(&scales).map_err(|e| partition_error("markov_violation", e))?;
        let out: BooleanArray = smoothness
            .iter()
            .map(|s| s.map(|s| s > self.threshold))
            .collect();
        Ok(Arc::new(out))
    }
}

crate::support::register::window_udf!(MarkovViolation::default());
