//! `thermo_smooth(value [, method]) OVER (PARTITION BY layer ORDER BY timestep)`: Phase 2 of the
//! thermodynamic constraint system, boundary smoothing of per-group parameters.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float64Array};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::{Documentation, PartitionEvaluator, Signature, WindowUDFImpl};
use datafusion_functions_window_common::field::WindowUDFFieldArgs;
use datafusion_functions_window_common::partition::PartitionEvaluatorArgs;

use crate::kernels::thermo::{SmoothMethod, smooth_steps};
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters};
use crate::support::doc::DOC_THERMODYNAMIC;
use crate::support::window::{
    constant_str, float_values, partition_error, result_field, window_arg_error,
};

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct ThermoSmooth {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_THERMODYNAMIC,
        "Boundary smoothing: the rows of the ordered partition carry a step series (each run of \
         equal values is one timestep group, e.g. every timestep joined to its group's scale); \
         the result replaces the steps by a curve through the centre of every run, so \
         parameters change gradually across group boundaries instead of jumping. 'linear' \
         (default) joins centres with straight lines (C⁰), 'cubic' with a natural cubic spline \
         (C², kept within the series' range), 'sigmoid' with a logistic ramp (flat near the \
         centres, steep at the boundary). Positions are row positions (evenly spaced \
         timesteps). Rows before the first and after the last centre keep their group's value; \
         one group is returned unchanged. NULL rows stay NULL and are skipped; NaN or ±Inf \
         values are an error. Works for scales and offsets alike.",
        "thermo_smooth(value [, method]) OVER (PARTITION BY layer ORDER BY timestep)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, timestep, thermo_smooth(scale, 'cubic') OVER (PARTITION BY layer ORDER BY timestep)\n  FROM timesteps JOIN group_params USING (layer, tg);\n```",
    )
    .with_argument("value", "The per-group parameter repeated on each of the group's rows.")
    .with_argument("method", "'linear' (default), 'cubic' or 'sigmoid' (a constant).")
    .with_related_udf("markov_smoothness")
    .build()
});

const PARAMETERS: Parameters =
    Parameters::new(&[("value", ArgType::Float), ("method", ArgType::Text)], 1);

impl WindowUDFImpl for ThermoSmooth {
    fn name(&self) -> &str {
        "thermo_smooth"
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
        let method = match constant_str(&args, self.name(), "method", 1)? {
            None => SmoothMethod::Linear,
            Some(name) => SmoothMethod::parse(&name)
                .map_err(|e| window_arg_error(self.name(), "method", &e))?,
        };
        Ok(Box::new(SmoothEvaluator { method }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        result_field(&field_args, DataType::Float64)
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[derive(Debug)]
struct SmoothEvaluator {
    method: SmoothMethod,
}

impl PartitionEvaluator for SmoothEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let values = float_values(&values[0])?;
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i as f64, v)))
            .collect();
        let smoothed =
            smooth_steps(&points, self.method).map_err(|e| partition_error("thermo_smooth", e))?;
        let mut out = vec![None; num_rows];
        for ((position, _), value) in points.iter().zip(smoothed) {
            out[*position as usize] = Some(value);
        }
        Ok(Arc::new(Float64Array::from(out)))
    }
}

crate::support::register::window_udf!(ThermoSmooth::default());
