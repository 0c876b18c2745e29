//! `compression_ratio(q [, source_bits])`: original bytes over stored bytes.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::Float64Builder;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::quantized::stored_bytes;
use crate::layout::quantized::QuantizedColumn;
use crate::support::args::UserDefined;
use crate::support::args::{ArgType, Parameters};
use crate::support::args::{IntArg, literal, row_error};
use crate::support::doc::DOC_QUALITY;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct CompressionRatio {
    signature: UserDefined,
}

const DEFAULT_SOURCE_BITS: i64 = 32;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUALITY,
        "Honest compression ratio of a quantized row: the original bytes (len × source_bits / 8) \
         over the stored bytes, counting the packed codes and every f16 scale and offset. NULL \
         for NULL or empty rows.",
        "compression_ratio(q [, source_bits])",
    )
    .with_sql_example("```sql\n> SELECT compression_ratio(quantize(weights, 4)) FROM layers; -- 7.11 for f32 at 4.5 bits a weight\n```")
    .with_argument("q", "A quantized value, as returned by quantize.")
    .with_argument("source_bits", "Bits per original value: 32 (default) for f32, 16 for f16 or bf16.")
    .build()
});

fn check_source_bits(function: &str, bits: i64) -> Result<()> {
    if (1..=64).contains(&bits) {
        Ok(())
    } else {
        plan_err!("{function}: argument 'source_bits' must be between 1 and 64, got {bits}")
    }
}

const PARAMETERS: Parameters = Parameters::new(
    &[("q", ArgType::Quantized), ("source_bits", ArgType::Integer)],
    1,
);

impl ScalarUDFImpl for CompressionRatio {
    fn name(&self) -> &str {
        "compression_ratio"
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

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        if let Some(ScalarValue::Int64(Some(bits))) = literal(args.scalar_arguments, 1) {
            check_source_bits(self.name(), *bits)?;
        }
        Ok(Arc::new(Field::new(self.name(), DataType::Float64, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        let column = QuantizedColumn::new(&array)?;
        let source_bits = match args.args.get(1) {
            Some(v) => IntArg::new(v)?,
            None => IntArg::Scalar(Some(DEFAULT_SOURCE_BITS)),
        };
        let mut out = Float64Builder::with_capacity(column.len());
        for row in 0..column.len() {
            let q = column
                .get(row)
                .map_err(|e| row_error(self.name(), row, e))?;
            match (q, source_bits.get(row)) {
                (Some(q), Some(bits)) if q.len > 0 => {
                    check_source_bits(self.name(), bits)?;
                    let original = f64::from(q.len) * bits as f64 / 8.0;
                    let stored = stored_bytes(q.codes.len(), q.scales.len(), q.offsets.len());
                    out.append_value(original / stored as f64);
                }
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(CompressionRatio::default());
