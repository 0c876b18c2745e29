//! `timestep_group_adaptive(statistic, num_groups) OVER (PARTITION BY layer ORDER BY timestep)`:
//! timestep groups whose boundaries follow the data.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::{Documentation, PartitionEvaluator, Signature, WindowUDFImpl};
use datafusion_functions_window_common::field::WindowUDFFieldArgs;
use datafusion_functions_window_common::partition::PartitionEvaluatorArgs;

use crate::kernels::thermo::adaptive_segments;
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters};
use crate::support::doc::DOC_DIFFUSION;
use crate::support::window::{constant, float_values, partition_error, result_field};

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct TimestepGroupAdaptive {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_DIFFUSION,
        "Adaptive timestep grouping: cuts the ordered timesteps of each partition into \
         num_groups contiguous groups so that the spread of the statistic inside the groups \
         (the total squared deviation from each group's mean) is the least possible. Exact \
         (dynamic programming, O(num_groups · (rows − num_groups)²) per partition), so \
         bounded: a partition needing more than 2^28 steps (about (num_groups − 2) · (rows − \
         num_groups)² / 2: any grouping of 1000 timesteps fits, 4000 timesteps fit in up to 36 \
         groups) or 2^24 back-pointers is refused with an error naming both figures. Returns the group, 0 for \
         the first timesteps. num_groups must be between 1 and the partition's row count; a \
         NULL, NaN or infinite statistic is an error.",
        "timestep_group_adaptive(statistic, num_groups) OVER (PARTITION BY layer ORDER BY timestep)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, timestep,\n         timestep_group_adaptive(greatest(abs(values[1]), abs(values[64])), 10)\n           OVER (PARTITION BY layer ORDER BY timestep) AS tg\n  FROM calibration;\n```",
    )
    .with_argument("statistic", "Per-timestep statistic to keep uniform inside groups, e.g. the absolute maximum.")
    .with_argument("num_groups", "Number of groups, a constant integer ≥ 1.")
    .with_related_udf("timestep_group")
    .build()
});

const PARAMETERS: Parameters = Parameters::new(
    &[
        ("statistic", ArgType::Float),
        ("num_groups", ArgType::Integer),
    ],
    2,
);

impl WindowUDFImpl for TimestepGroupAdaptive {
    fn name(&self) -> &str {
        "timestep_group_adaptive"
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
        let groups = match constant(&args, self.name(), "num_groups", 1)? {
            Some(ScalarValue::Int64(Some(g))) if g >= 1 => g as usize,
            Some(other) => {
                return plan_err!(
                    "{}: argument 'num_groups' must be at least 1, got {other}",
                    self.name()
                );
            }
            None => return plan_err!("{}: argument 'num_groups' is missing", self.name()),
        };
        Ok(Box::new(AdaptiveEvaluator { groups }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        result_field(&field_args, DataType::Int64)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[derive(Debug)]
struct AdaptiveEvaluator {
    groups: usize,
}

impl PartitionEvaluator for AdaptiveEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], _num_rows: usize) -> Result<ArrayRef> {
        let name = "timestep_group_adaptive";
        let stats = float_values(&values[0])?
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| {
                    partition_error(
                        name,
                        format!("statistic at position {i} of the partition is NULL"),
                    )
                })
            })
            .collect::<Result<Vec<f64>>>()?;
        let ids = adaptive_segments(&stats, self.groups).map_err(|e| partition_error(name, e))?;
        Ok(Arc::new(Int64Array::from_iter_values(
            ids.into_iter().map(|g| g as i64),
        )))
    }
}

crate::support::register::window_udf!(TimestepGroupAdaptive::default());
