//! `timestep_group(timestep, num_timesteps, num_groups [, spacing])`: the group of a diffusion
//! timestep, for per-group activation ranges (`quant_params(values, bits) ... GROUP BY layer,
//! timestep_group(...)`).

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::Int64Builder;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::timesteps::{Spacing, check_schedule, timestep_group};
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters};
use crate::support::args::{IntArg, StrArg, arg_error, literal, row_error};
use crate::support::doc::DOC_DIFFUSION;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct TimestepGroup {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_DIFFUSION,
        "The group, in [0, num_groups), of a timestep of a schedule of num_timesteps steps. \
         'uniform' spacing (default) cuts the schedule into groups of equal length; 'log' spaces \
         the boundaries evenly in log(1 + t), giving short groups near t = 0. Timesteps outside \
         [0, num_timesteps) are an error; NULL arguments give NULL.",
        "timestep_group(timestep, num_timesteps, num_groups [, spacing])",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, timestep_group(timestep, 1000, 10) AS tg, quant_params(values, 8) AS p\n  FROM calibration GROUP BY layer, tg;\n```",
    )
    .with_argument("timestep", "Integer timestep, 0 ≤ timestep < num_timesteps.")
    .with_argument("num_timesteps", "Length of the schedule (at least 1).")
    .with_argument("num_groups", "Number of groups, 1 to num_timesteps.")
    .with_argument("spacing", "'uniform' (default) or 'log'.")
    .build()
});

const PARAMETERS: Parameters = Parameters::new(
    &[
        ("timestep", ArgType::Integer),
        ("num_timesteps", ArgType::Integer),
        ("num_groups", ArgType::Integer),
        ("spacing", ArgType::Text),
    ],
    3,
);

impl ScalarUDFImpl for TimestepGroup {
    fn name(&self) -> &str {
        "timestep_group"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        PARAMETERS.coerce(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        // Literal schedules and spacings are checked while planning.
        let int = |i| match literal(args.scalar_arguments, i) {
            Some(ScalarValue::Int64(Some(v))) => Some(*v),
            _ => None,
        };
        if let Some(steps) = int(1) {
            check_schedule(steps, 1).map_err(|e| arg_error(self.name(), "num_timesteps", &e))?;
            if let Some(groups) = int(2) {
                check_schedule(steps, groups)
                    .map_err(|e| arg_error(self.name(), "num_groups", &e))?;
            }
        }
        if let Some(ScalarValue::Utf8(Some(name))) = literal(args.scalar_arguments, 3) {
            Spacing::parse(name).map_err(|e| arg_error(self.name(), "spacing", &e))?;
        }
        Ok(Arc::new(Field::new(self.name(), DataType::Int64, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let timestep = IntArg::new(&args.args[0])?;
        let steps = IntArg::new(&args.args[1])?;
        let groups = IntArg::new(&args.args[2])?;
        let spacing = args.args.get(3).map(StrArg::new).transpose()?;
        let mut out = Int64Builder::with_capacity(rows);
        for row in 0..rows {
            let spacing = match &spacing {
                None => Some(Spacing::Uniform),
                Some(s) => s
                    .get(row)
                    .map(Spacing::parse)
                    .transpose()
                    .map_err(|e| row_error(self.name(), row, e))?,
            };
            match (timestep.get(row), steps.get(row), groups.get(row), spacing) {
                (Some(t), Some(n), Some(g), Some(spacing)) => out.append_value(
                    timestep_group(t, n, g, spacing).map_err(|e| row_error(self.name(), row, e))?,
                ),
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(TimestepGroup::default());
