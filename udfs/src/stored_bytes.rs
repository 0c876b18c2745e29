//! `stored_bytes(q)`: the bytes a quantized row takes: packed codes plus every f16 scale and
//! offset (what `compression_ratio` divides by).

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::Int64Builder;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::quantized;
use crate::layout::quantized::QuantizedColumn;
use crate::support::args::UserDefined;
use crate::support::args::row_error;
use crate::support::args::{ArgType, Parameters};
use crate::support::doc::DOC_QUALITY;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct StoredBytes {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUALITY,
        "Bytes a quantized row takes: its packed codes plus two bytes for every scale and offset \
         (GGUF rows: their blocks, scales included). NULL for NULL rows.",
        "stored_bytes(q)",
    )
    .with_sql_example("```sql\n> SELECT layer, sum(stored_bytes(quantize(weights, 4))) FROM layers GROUP BY layer;\n```")
    .with_argument("q", "A quantized value, as returned by quantize.")
    .build()
});

const PARAMETERS: Parameters = Parameters::new(&[("q", ArgType::Quantized)], 1);

impl ScalarUDFImpl for StoredBytes {
    fn name(&self) -> &str {
        "stored_bytes"
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

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        let column = QuantizedColumn::new(&array)?;
        let mut out = Int64Builder::with_capacity(column.len());
        for row in 0..column.len() {
            let q = column
                .get(row)
                .map_err(|e| row_error(self.name(), row, e))?;
            out.append_option(q.map(|q| {
                quantized::stored_bytes(q.codes.len(), q.scales.len(), q.offsets.len()) as i64
            }));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(StoredBytes::default());
