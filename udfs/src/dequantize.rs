//! `dequantize(q)`: a quantized struct back to its values.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Float32Builder, ListBuilder};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::quantized::Quantizer;
use crate::layout::quantized::{QuantizedColumn, coerce_quantized};
use crate::support::args::UserDefined;
use crate::support::args::{check_arity, float32_list, row_error};
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

impl ScalarUDFImpl for Dequantize {
    fn name(&self) -> &str {
        "dequantize"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        check_arity(self.name(), "(q)", arg_types.len(), 1, 1)?;
        Ok(vec![coerce_quantized(self.name(), "q", &arg_types[0])?])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(float32_list())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        let column = QuantizedColumn::new(&array)?;
        let DataType::List(item) = float32_list() else {
            unreachable!()
        };
        let mut out = ListBuilder::with_capacity(Float32Builder::new(), column.len())
            .with_field(Arc::<Field>::clone(&item));
        let mut quantizer = Quantizer::default();
        let mut values = Vec::new();
        for row in 0..column.len() {
            match column
                .get(row)
                .map_err(|e| row_error(self.name(), row, e))?
            {
                Some(q) => {
                    quantizer
                        .dequantize(&q, &mut values)
                        .map_err(|e| row_error(self.name(), row, e))?;
                    out.values().append_slice(&values);
                    out.append(true);
                }
                None => out.append(false),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(Dequantize::default());
