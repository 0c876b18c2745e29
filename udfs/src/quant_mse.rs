//! `quant_mse(values, scale, offset, bits)`: the error of given quantization parameters on a
//! row, e.g. one timestep's activations under its group's range.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::Float64Builder;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::KernelError;
use crate::kernels::error::check_finite;
use crate::kernels::error::{GRID_BITS, readable};
use crate::kernels::thermo::{RangeChoice, range_mse};
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters};
use crate::support::args::{FloatRows, IntArg, row_error};
use crate::support::doc::DOC_DIFFUSION;
use crate::support::window::float_values;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct QuantMse {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_DIFFUSION,
        "Mean squared error of a row rounded to the grid offset + scale · k, k = 0 … 2^bits − 1 \
         (values beyond the grid clamp to its ends): how well given parameters — a timestep \
         group's activation range, a smoothed or optimised one — fit these values. NULL \
         arguments give NULL. Errors: bits outside 2 to 8 (7 included: these codes are never \
         packed), a scale that is not positive, a scale or offset beyond Float32, NaN or ±Inf \
         values.",
        "quant_mse(values, scale, offset, bits)",
    )
    .with_sql_example("```sql\n> SELECT quant_mse([0.0, 0.5, 1.0, 1.5], 0.5, 0.0, 2);\n0.0\n```")
    .with_argument("values", "List of floats.")
    .with_argument("scale", "Step between codes, > 0.")
    .with_argument("offset", "Value of code 0.")
    .with_argument("bits", "Code width, 2 to 8 (7 included).")
    .with_related_udf("quant_params")
    .build()
});

const PARAMETERS: Parameters = Parameters::new(
    &[
        ("values", ArgType::FloatList),
        ("scale", ArgType::Float),
        ("offset", ArgType::Float),
        ("bits", ArgType::Integer),
    ],
    4,
);

impl ScalarUDFImpl for QuantMse {
    fn name(&self) -> &str {
        "quant_mse"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        PARAMETERS.coerce(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let values = args.args[0].to_array(rows)?;
        let values = FloatRows::new(&values, self.name(), "values")?;
        let scale = float_values(&args.args[1].to_array(rows)?)?;
        let offset = float_values(&args.args[2].to_array(rows)?)?;
        let bits = IntArg::new(&args.args[3])?;
        let mut out = Float64Builder::with_capacity(rows);
        for row in 0..rows {
            let (Some(v), Some(scale), Some(offset), Some(bits)) =
                (values.row(row), scale[row], offset[row], bits.get(row))
            else {
                out.append_null();
                continue;
            };
            let fail = |e| row_error(self.name(), row, e);
            if !(2..=8).contains(&bits) {
                return Err(fail(
                    KernelError::UnsupportedBits {
                        bits,
                        expected: GRID_BITS,
                    }
                    .to_string(),
                ));
            }
            let limit = f64::from(f32::MAX);
            if !(scale.is_finite() && scale > 0.0 && scale <= limit) {
                return Err(fail(format!(
                    "scale must be positive, finite and within Float32 (3.4e38), got {}",
                    readable(scale)
                )));
            }
            if !(offset.is_finite() && offset.abs() <= limit) {
                return Err(fail(format!(
                    "offset must be finite and within Float32 (±3.4e38), got {}",
                    readable(offset)
                )));
            }
            check_finite(v).map_err(|e| fail(e.to_string()))?;
            out.append_value(range_mse(
                v,
                RangeChoice { scale, offset },
                (1u32 << bits) - 1,
            ));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(QuantMse::default());
