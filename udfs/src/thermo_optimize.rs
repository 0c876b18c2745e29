//! `thermo_optimize(state, bits [, lambda_markov [, lambda_entropy]]) OVER (PARTITION BY layer
//! ORDER BY tg)`: Phase 3 of the thermodynamic constraint system, every group's range chosen
//! jointly.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float32Array, Float64Array, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, FieldRef, Fields};
use datafusion::common::Result;
use datafusion::logical_expr::{Documentation, PartitionEvaluator, Signature, WindowUDFImpl};
use datafusion_functions_window_common::field::WindowUDFFieldArgs;
use datafusion_functions_window_common::partition::PartitionEvaluatorArgs;

use crate::kernels::thermo::{ChainWeights, optimize_chain};
use crate::support::args::FloatRows;
use crate::support::args::UserDefined;
use crate::support::args::nullable_fields;
use crate::support::args::{ArgType, Parameters};
use crate::support::doc::DOC_THERMODYNAMIC;
use crate::support::window::{chain_weights, partition_error, result_field};

pub use crate::support::window::{DEFAULT_LAMBDA_ENTROPY, DEFAULT_LAMBDA_MARKOV};

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct ThermoOptimize {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_THERMODYNAMIC,
        "Transition optimisation: one clipping range per timestep group (the rows of the \
         ordered partition), chosen jointly to minimise Σ mse_g / best_mse_g + lambda_markov · \
         Σ ((s_{g+1} − s_g) / s_g)² + lambda_entropy · Σ H_g / bits, where mse_g is the group's \
         MSE at bits-bit codes, best_mse_g the least MSE the group reaches alone (so the first \
         term is 1 per group at its own optimum), s_g its scale and H_g the entropy of its \
         codes in bits. Candidates per group: 192 clipping ranges (fractions of its extent on \
         either side of zero) plus the best scale of each of the 16 groups on either side, \
         centred on this group's data (when that range stays within Float32); the minimum \
         over all combinations is found exactly by dynamic programming, in time and memory \
         linear in the number of groups (at most 224 candidates a group: O(groups · 224²)). \
         Returns {scale, offset (the value of code 0), clip_min, clip_max, mse, objective (of \
         the whole partition, on every row)}. Errors: NULL or empty states, NaN or ±Inf \
         values, bits outside 2 to 8 (7 included: the codes are never packed), lambdas that \
         are not constants ≥ 0.",
        "thermo_optimize(state, bits [, lambda_markov [, lambda_entropy]]) OVER (PARTITION BY layer ORDER BY tg)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, tg, thermo_optimize(vals, 8, 1.0, 0.01) OVER (PARTITION BY layer ORDER BY tg) AS p\n  FROM (SELECT layer, tg, flatten(array_agg(values)) AS vals FROM calibration GROUP BY layer, tg);\n```",
    )
    .with_argument("state", "The group's values: a list of floats (e.g. flatten(array_agg(values))).")
    .with_argument("bits", "Code width, 2 to 8 (7 included), a constant.")
    .with_argument("lambda_markov", "Weight of the transition term, a constant ≥ 0 (default 1).")
    .with_argument("lambda_entropy", "Weight of the code entropy term, a constant ≥ 0 (default 0.01).")
    .with_related_udf("markov_violation")
    .build()
});

fn fields() -> Fields {
    nullable_fields(&[
        ("scale", DataType::Float32),
        ("offset", DataType::Float32),
        ("clip_min", DataType::Float32),
        ("clip_max", DataType::Float32),
        ("mse", DataType::Float64),
        ("objective", DataType::Float64),
    ])
}

const PARAMETERS: Parameters = Parameters::new(
    &[
        ("state", ArgType::FloatList),
        ("bits", ArgType::Integer),
        ("lambda_markov", ArgType::Float),
        ("lambda_entropy", ArgType::Float),
    ],
    2,
);

impl WindowUDFImpl for ThermoOptimize {
    fn name(&self) -> &str {
        "thermo_optimize"
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
        let weights = chain_weights(&args, self.name(), 1)?;
        Ok(Box::new(OptimizeEvaluator { weights }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        result_field(&field_args, DataType::Struct(fields()))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[derive(Debug)]
struct OptimizeEvaluator {
    weights: ChainWeights,
}

impl PartitionEvaluator for OptimizeEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let name = "thermo_optimize";
        let rows = FloatRows::new(&values[0], name, "state")?;
        let groups = (0..num_rows)
            .map(|g| {
                rows.row(g).ok_or_else(|| {
                    partition_error(
                        name,
                        format!("state at position {g} of the partition is NULL"),
                    )
                })
            })
            .collect::<Result<Vec<&[f32]>>>()?;
        let solution =
            optimize_chain(&groups, self.weights).map_err(|e| partition_error(name, e))?;
        let levels = f64::from((1u32 << self.weights.bits) - 1);
        let column = |f: &dyn Fn(usize) -> f64| -> ArrayRef {
            Arc::new(Float32Array::from_iter_values(
                (0..num_rows).map(|g| f(g) as f32),
            ))
        };
        let chosen = &solution.groups;
        let arrays: Vec<ArrayRef> = vec![
            column(&|g| chosen[g].choice.scale),
            column(&|g| chosen[g].choice.offset),
            column(&|g| chosen[g].choice.offset),
            column(&|g| chosen[g].choice.clip_max(levels)),
            Arc::new(Float64Array::from_iter_values(chosen.iter().map(|g| g.mse))),
            Arc::new(Float64Array::from_iter_values(std::iter::repeat_n(
                solution.objective,
                num_rows,
            ))),
        ];
        Ok(Arc::new(StructArray::try_new(
            fields(),
            arrays,
            None::<NullBuffer>,
        )?))
    }
}

crate::support::register::window_udf!(ThermoOptimize::default());
