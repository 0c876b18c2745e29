//! `quantize_measured(weights, bits [, group_size [, scheme]])`: `quantize` and the
//! `error_sums` of the result in one pass over the weights.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::StructArray;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::common::{FloatRows, quantized_type, row_error};
use crate::doc::{DOC_QUANTIZATION, scheme_list};
use crate::error_sums::{SumsBuilder, error_sums_type};
use crate::kernels::quantized::{QuantizedRow, Quantizer};
use crate::quant_args::{self, SpecArgs};
use crate::quantize::QuantizedBuilder;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct QuantizeMeasured {
    signature: Signature,
}

impl Default for QuantizeMeasured {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn fields() -> Fields {
    Fields::from(vec![
        Field::new("quantized", quantized_type(), true),
        Field::new("error_sums", error_sums_type(), true),
    ])
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUANTIZATION,
        "Quantizes a row and measures the result in the same pass: a struct {quantized, \
         error_sums} equal, bit for bit, to {quantize(weights, ...), error_sums(weights, \
         quantize(weights, ...))}. Each cache-sized piece of the row is quantized, rebuilt and \
         compared while it is in cache, so the weights are read from memory once instead of \
         twice. A NULL row or argument gives NULL; NaN or ±Inf values are an error. (DataFusion \
         55 evaluates it once per field read unless datafusion.optimizer.\
         enable_leaf_expression_pushdown is false, as in ArrowQuant's own sessions.)",
        "quantize_measured(weights, bits [, group_size [, scheme]])",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, m['quantized'] AS q,\n         m['error_sums']['dot'] / sqrt(m['error_sums']['a_sq'] * m['error_sums']['b_sq']) AS cosine\n  FROM (SELECT layer, quantize_measured(weights, 4) AS m FROM layers);\n```",
    )
    .with_argument("weights", "List of Float16, Float32 or Float64: one row of a tensor.")
    .with_argument("bits", "Code width, as for quantize.")
    .with_argument("group_size", "Values per group, as for quantize (default 64).")
    .with_argument("scheme", scheme_list())
    .with_related_udf("quantize")
    .with_related_udf("error_sums")
    .build()
});

impl ScalarUDFImpl for QuantizeMeasured {
    fn name(&self) -> &str {
        "quantize_measured"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        quant_args::coerce(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(fields()))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        quant_args::validate_literals(self.name(), args.scalar_arguments)?;
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Struct(fields()),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let weights = args.args[0].to_array(args.number_rows)?;
        let rows = FloatRows::new(&weights, self.name(), "weights")?;
        let mut spec_args = SpecArgs::new(&args.args)?;
        let mut quantized = QuantizedBuilder::with_capacity(rows.len());
        let mut sums = SumsBuilder::with_capacity(rows.len());
        let mut quantizer = Quantizer::default();
        let mut row_out = QuantizedRow::default();
        for row in 0..rows.len() {
            let spec = spec_args
                .spec(row)
                .map_err(|e| row_error(self.name(), row, e))?;
            match (rows.row(row), spec) {
                (Some(x), Some(spec)) => {
                    let s = quantizer
                        .quantize_measured(x, &spec, &mut row_out)
                        .map_err(|e| row_error(self.name(), row, e))?;
                    quantized.append(&row_out, spec.bits, x.len() as u32, spec.scheme.name());
                    sums.append(&s);
                }
                _ => {
                    quantized.append_null();
                    sums.append_null();
                }
            }
        }
        // The struct itself is never NULL: its fields are, so that m['quantized'] of a NULL
        // row is a NULL quantized value.
        Ok(ColumnarValue::Array(Arc::new(StructArray::new(
            fields(),
            vec![quantized.finish()?, sums.finish()],
            None,
        ))))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}
