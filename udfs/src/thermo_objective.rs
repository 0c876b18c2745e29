//! `thermo_objective(state, scale, offset, bits [, lambda_markov [, lambda_entropy]]) OVER
//! (PARTITION BY layer ORDER BY tg)`: the transition objective of given per-group ranges, to
//! compare any schedule with the one `thermo_optimize` finds.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float64Array};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::{Documentation, PartitionEvaluator, Signature, WindowUDFImpl};
use datafusion_functions_window_common::field::WindowUDFFieldArgs;
use datafusion_functions_window_common::partition::PartitionEvaluatorArgs;

use crate::kernels::thermo::{ChainWeights, RangeChoice, chain_objective, check_range};
use crate::support::args::FloatRows;
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters};
use crate::support::doc::DOC_THERMODYNAMIC;
use crate::support::window::{chain_weights, float_values, partition_error, result_field};

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct ThermoObjective {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_THERMODYNAMIC,
        "The objective thermo_optimize minimises, for the given range of every group (scale, \
         and offset = the value of code 0): Σ mse_g / best_mse_g + lambda_markov · Σ ((s_{g+1} \
         − s_g) / s_g)² + lambda_entropy · Σ H_g / bits, the same value on every row of the \
         partition. Compares any schedule (static, per-group quant_params, smoothed) with the \
         optimised one under one measure. Errors: NULL or empty states, NaN or ±Inf values, \
         NULL or non-positive scales, NULL offsets, scales or offsets that are not finite or \
         beyond Float32, bits outside 2 to 8, negative lambdas.",
        "thermo_objective(state, scale, offset, bits [, lambda_markov [, lambda_entropy]]) OVER (PARTITION BY layer ORDER BY tg)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, thermo_objective(vals, p['scale'], p['offset'], 8) OVER (PARTITION BY layer ORDER BY tg)\n  FROM group_params;\n```",
    )
    .with_argument("state", "The group's values: a list of floats.")
    .with_argument("scale", "The group's scale, > 0.")
    .with_argument("offset", "The value of the group's code 0.")
    .with_argument("bits", "Code width, 2 to 8 (7 included), a constant.")
    .with_argument("lambda_markov", "Weight of the transition term, a constant ≥ 0 (default 1).")
    .with_argument("lambda_entropy", "Weight of the code entropy term, a constant ≥ 0 (default 0.01).")
    .with_related_udf("thermo_optimize")
    .build()
});

const PARAMETERS: Parameters = Parameters::new(
    &[
        ("state", ArgType::FloatList),
        ("scale", ArgType::Float),
        ("offset", ArgType::Float),
        ("bits", ArgType::Integer),
        ("lambda_markov", ArgType::Float),
        ("lambda_entropy", ArgType::Float),
    ],
    4,
);

impl WindowUDFImpl for ThermoObjective {
    fn name(&self) -> &str {
        "thermo_objective"
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
        let weights = chain_weights(&args, self.name(), 3)?;
        Ok(Box::new(ObjectiveEvaluator { weights }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        result_field(&field_args, DataType::Float64)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[derive(Debug)]
struct ObjectiveEvaluator {
    weights: ChainWeights,
}

impl PartitionEvaluator for ObjectiveEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let name = "thermo_objective";
        let rows = FloatRows::new(&values[0], name, "state")?;
        let scales = float_values(&values[1])?;
        let offsets = float_values(&values[2])?;
        let mut groups = Vec::with_capacity(num_rows);
        let mut choices = Vec::with_capacity(num_rows);
        for g in 0..num_rows {
            let missing = |what: &str| {
                partition_error(
                    name,
                    format!("{what} at position {g} of the partition is NULL"),
                )
            };
            groups.push(rows.row(g).ok_or_else(|| missing("state"))?);
            let scale = scales[g].ok_or_else(|| missing("scale"))?;
            let offset = offsets[g].ok_or_else(|| missing("offset"))?;
            let choice = RangeChoice { scale, offset };
            check_range(g, choice).map_err(|e| partition_error(name, e))?;
            choices.push(choice);
        }
        let objective = chain_objective(&groups, &choices, self.weights)
            .map_err(|e| partition_error(name, e))?;
        Ok(Arc::new(Float64Array::from(vec![objective; num_rows])))
    }
}

crate::support::register::window_udf!(ThermoObjective::default());
