//! `smooth_scales(act_absmax, weight_absmax [, alpha])`: SmoothQuant's per-channel migration
//! factors.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::spatial::smooth_scales;
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters, float32_list_rows};
use crate::support::args::{FloatRows, float32_list, literal};
use crate::support::doc::DOC_SPATIAL;

pub const DEFAULT_ALPHA: f64 = 0.5;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct SmoothScales {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SPATIAL,
        "SmoothQuant migration factors per input channel: s_j = act_absmax_j^alpha / \
         weight_absmax_j^(1 − alpha). Dividing the activations by s and multiplying the \
         weights' input channels by s (equalize) leaves the layer's output unchanged while \
         moving activation outliers into the weights. Channels with a zero maximum get 1. \
         Lists of different lengths and NaN/±Inf are errors; NULL rows give NULL.",
        "smooth_scales(act_absmax, weight_absmax [, alpha])",
    )
    .with_sql_example(
        "```sql\n> SELECT smooth_scales([16.0, 1.0], [1.0, 4.0], 0.5);\n[4.0, 0.5]\n```",
    )
    .with_argument(
        "act_absmax",
        "Activation absolute maxima per input channel.",
    )
    .with_argument(
        "weight_absmax",
        "Weight absolute maxima per input channel (column_absmax).",
    )
    .with_argument(
        "alpha",
        "Migration strength, a constant in [0, 1] (default 0.5).",
    )
    .with_related_udf("equalize")
    .build()
});

fn alpha_of(value: Option<&ScalarValue>) -> Result<f64> {
    match value.map(|v| v.cast_to(&DataType::Float64)).transpose()? {
        None => Ok(DEFAULT_ALPHA),
        Some(ScalarValue::Float64(Some(a))) if (0.0..=1.0).contains(&a) => Ok(a),
        Some(other) => {
            plan_err!("smooth_scales: argument 'alpha' must be a constant in [0, 1], got {other}")
        }
    }
}

const PARAMETERS: Parameters = Parameters::new(
    &[
        ("act_absmax", ArgType::FloatList),
        ("weight_absmax", ArgType::FloatList),
        ("alpha", ArgType::Float),
    ],
    2,
);

impl ScalarUDFImpl for SmoothScales {
    fn name(&self) -> &str {
        "smooth_scales"
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

    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> Result<datafusion::arrow::datatypes::FieldRef> {
        // Checked here when it is a literal; a cast literal is folded and checked when run.
        alpha_of(literal(args.scalar_arguments, 2))?;
        Ok(Arc::new(datafusion::arrow::datatypes::Field::new(
            self.name(),
            float32_list(),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let alpha = match args.args.get(2) {
            Some(ColumnarValue::Scalar(s)) => alpha_of(Some(s))?,
            Some(_) => return plan_err!("smooth_scales: argument 'alpha' must be a constant"),
            None => DEFAULT_ALPHA,
        };
        let rows = args.number_rows;
        let act = args.args[0].to_array(rows)?;
        let weight = args.args[1].to_array(rows)?;
        let act = FloatRows::new(&act, self.name(), "act_absmax")?;
        let weight = FloatRows::new(&weight, self.name(), "weight_absmax")?;
        float32_list_rows(self.name(), rows, |row, scales| {
            let (Some(a), Some(w)) = (act.row(row), weight.row(row)) else {
                return Ok(false);
            };
            smooth_scales(a, w, alpha, scales).map(|()| true)
        })
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(SmoothScales::default());
