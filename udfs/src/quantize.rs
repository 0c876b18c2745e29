//! `quantize(weights, bits [, group_size [, scheme]])`: a row of weights to its stored form.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::quantized::{QuantizedRow, Quantizer};
use crate::layout::quantized::QuantizedBuilder;
use crate::layout::quantized::quantized_type;
use crate::support::args::UserDefined;
use crate::support::args::row_error;
use crate::support::doc::{DOC_QUANTIZATION, scheme_list};
use crate::support::quant_args::{self, IMPORTANCE_DOC, QuantRows};

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct Quantize {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUANTIZATION,
        "Quantizes a row of weights. Returns a struct {codes, scales, offsets, bits, group_size, \
         len, scheme}: packed codes (low bits first) or llama.cpp's blocks for the GGUF schemes, \
         and one f16 scale (and offset, the value of code 0) per group. The default scheme \
         'asym' searches each group's clipping range and refines scale and offset by least \
         squares. A NULL row or argument gives NULL; NaN or ±Inf values are an error.",
        "quantize(weights, bits [, group_size [, scheme [, importance]]])",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, row, quantize(weights, 4) AS q FROM layers;\n\
         > SELECT quantize(weights, 4, 32, 'q4_0')['codes'] FROM layers;\n```",
    )
    .with_argument("weights", "List of Float16, Float32 or Float64: one row of a tensor.")
    .with_argument("bits", "Code width: 2, 3, 4, 5, 6 or 8 for asym, sym, asym_minmax and sym_minmax (7 is refused: it has no packing); the GGUF schemes fix theirs: 2 for q2_K, 3 for q3_K, 4 for q4_0, q4_1, q4_K, iq4_nl and iq4_xs, 5 for q5_0, q5_1 and q5_K, 6 for q6_K, 8 for q8_0.")
    .with_argument(
        "group_size",
        "Values per group, 16 to 4096 (default 64), or 'row' for one group per row. GGUF schemes use their block: 256 for the k-quants and iq4_xs, 32 for the others.",
    )
    .with_argument("scheme", scheme_list())
    .with_argument("importance", IMPORTANCE_DOC)
    .with_related_udf("dequantize")
    .with_related_udf("quant_error")
    .build()
});

impl ScalarUDFImpl for Quantize {
    fn name(&self) -> &str {
        "quantize"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        quant_args::QUANT_ARGS.coerce(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(quantized_type())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        quant_args::validate_literals(self.name(), args.scalar_arguments)?;
        Ok(Arc::new(Field::new(self.name(), quantized_type(), true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let weights = args.args[0].to_array(args.number_rows)?;
        let importance = quant_args::importance_array(&args)?;
        let mut rows = QuantRows::new(self.name(), &weights, &args.args, importance.as_ref())?;
        let mut out = QuantizedBuilder::with_capacity(rows.len());
        let mut quantizer = Quantizer::default();
        let mut row_out = QuantizedRow::default();
        for row in 0..rows.len() {
            match rows.get(row)? {
                Some(r) => {
                    quantizer
                        .quantize_weighted(r.values, &r.spec, r.importance, &mut row_out)
                        .map_err(|e| row_error(self.name(), row, e))?;
                    let (bits, scheme) = (r.spec.bits, r.spec.scheme.name());
                    out.append(&row_out, bits, r.values.len() as u32, scheme);
                }
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(out.finish()?))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(Quantize::default());
