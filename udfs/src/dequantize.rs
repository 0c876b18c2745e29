//! `dequantize(q)`: a quantized struct back to its values.

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::quantized::Quantizer;
use crate::layout::quantized::QuantizedColumn;
use crate::support::args::UserDefined;
use crate::support::args::float32_list;
use crate::support::args::{ArgType, Parameters, float32_list_rows};
use crate::support::doc::DOC_QUANTIZATION;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct Dequantize {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUANTIZATION,
        "Rebuilds the Float32 values of a quantized row. Every length in the struct is checked \
         first: a corrupted value is an error, never an out-of-bounds read. NULL gives NULL.",
        "dequantize(q)",
    )
    .with_sql_example("```sql\n> SELECT dequantize(quantize(weights, 4)) FROM layers;\n```")
    .with_argument(
        "q",
        "A quantized value, as returned by quantize (also after a Parquet round trip).",
    )
    .with_related_udf("quantize")
    .build()
});

const PARAMETERS: Parameters = Parameters::new(&[("q", ArgType::Quantized)], 1);

impl ScalarUDFImpl for Dequantize {
    fn name(&self) -> &str {
        "dequantize"
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
        let array = args.args[0].to_array(args.number_rows)?;
        let column = QuantizedColumn::new(&array)?;
        let mut quantizer = Quantizer::default();
        float32_list_rows(
            self.name(),
            column.len(),
            |row, values| -> Result<bool, String> {
                let Some(q) = column.get(row)? else {
                    return Ok(false);
                };
                quantizer
                    .dequantize(&q, values)
                    .map_err(|e| e.to_string())?;
                Ok(true)
            },
        )
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(Dequantize::default());
