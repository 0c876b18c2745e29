//! `equalize(weights, factors)`: multiply each input channel of a weight row by its factor.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::spatial::equalize;
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters, float32_list_rows};
use crate::support::args::{FloatRows, float32_list};
use crate::support::doc::DOC_SPATIAL;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct Equalize {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SPATIAL,
        "Per-channel equalisation: the weight row cut into as many channels as there are \
         factors (consecutive runs of equal length, e.g. in_channels × kh × kw values of a \
         conv row), each channel multiplied by its factor (smooth_scales for SmoothQuant). \
         Factors must be positive and finite and divide the row evenly; NULL rows give NULL.",
        "equalize(weights, factors)",
    )
    .with_sql_example(
        "```sql\n> SELECT equalize([1.0, 2.0, 3.0, 4.0], [2.0, 0.5]);\n[2.0, 4.0, 1.5, 2.0]\n```",
    )
    .with_argument("weights", "A weight row: list of floats.")
    .with_argument("factors", "One positive factor per input channel.")
    .with_related_udf("smooth_scales")
    .build()
});

const PARAMETERS: Parameters = Parameters::new(
    &[
        ("weights", ArgType::FloatList),
        ("factors", ArgType::FloatList),
    ],
    2,
);

impl ScalarUDFImpl for Equalize {
    fn name(&self) -> &str {
        "equalize"
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

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let weights = args.args[0].to_array(rows)?;
        let factors = args.args[1].to_array(rows)?;
        let weights = FloatRows::new(&weights, self.name(), "weights")?;
        let factors = FloatRows::new(&factors, self.name(), "factors")?;
        float32_list_rows(self.name(), rows, |row, scaled| {
            let (Some(w), Some(f)) = (weights.row(row), factors.row(row)) else {
                return Ok(false);
            };
            equalize(w, f, scaled).map(|()| true)
        })
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(Equalize::default());
