//! `clip_outliers(weights [, k_sigma])`: soft clipping of the values beyond k σ of a row.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::spatial::clip_outliers;
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters, float32_list_rows};
use crate::support::args::{FloatRows, float32_list, literal};
use crate::support::doc::DOC_SPATIAL;

pub const DEFAULT_K_SIGMA: f64 = 3.0;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct ClipOutliers {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SPATIAL,
        "Outlier smoothing: values further than k_sigma standard deviations from the row's \
         mean are pulled in, their excess e beyond k σ becoming σ·ln(1 + e/σ) (continuous, \
         order-preserving, slope 1 at the threshold); values within k σ are unchanged. A \
         tighter range for the quantizer at the cost of the outliers' exact values. NaN/±Inf \
         are errors; NULL rows give NULL.",
        "clip_outliers(weights [, k_sigma])",
    )
    .with_sql_example("```sql\n> SELECT clip_outliers(weights, 3) FROM layers;\n```")
    .with_argument("weights", "A row: list of floats.")
    .with_argument(
        "k_sigma",
        "Threshold in standard deviations, a constant > 0 (default 3).",
    )
    .with_related_udf("weight_stats")
    .build()
});

fn k_sigma_of(value: Option<&ScalarValue>) -> Result<f64> {
    match value.map(|v| v.cast_to(&DataType::Float64)).transpose()? {
        None => Ok(DEFAULT_K_SIGMA),
        Some(ScalarValue::Float64(Some(k))) if k.is_finite() && k > 0.0 => Ok(k),
        Some(other) => {
            plan_err!("clip_outliers: argument 'k_sigma' must be a constant > 0, got {other}")
        }
    }
}

const PARAMETERS: Parameters = Parameters::new(
    &[("weights", ArgType::FloatList), ("k_sigma", ArgType::Float)],
    1,
);

impl ScalarUDFImpl for ClipOutliers {
    fn name(&self) -> &str {
        "clip_outliers"
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

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        // Checked here when it is a literal; a cast literal is folded and checked when run.
        k_sigma_of(literal(args.scalar_arguments, 1))?;
        Ok(Arc::new(Field::new(self.name(), float32_list(), true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let k_sigma = match args.args.get(1) {
            Some(ColumnarValue::Scalar(s)) => k_sigma_of(Some(s))?,
            Some(_) => return plan_err!("clip_outliers: argument 'k_sigma' must be a constant"),
            None => DEFAULT_K_SIGMA,
        };
        let rows = args.number_rows;
        let weights = args.args[0].to_array(rows)?;
        let weights = FloatRows::new(&weights, self.name(), "weights")?;
        float32_list_rows(self.name(), rows, |row, clipped| {
            let Some(w) = weights.row(row) else {
                return Ok(false);
            };
            clip_outliers(w, k_sigma, clipped).map(|()| true)
        })
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(ClipOutliers::default());
