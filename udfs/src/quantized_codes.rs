//! `quantized_codes(q)`: the codes of a quantized row, one signed byte per value.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Int8Array, ListArray};
use datafusion::arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::quantized::signed_codes;
use crate::layout::quantized::QuantizedColumn;
use crate::support::args::UserDefined;
use crate::support::args::row_error;
use crate::support::args::{ArgType, Parameters};
use crate::support::doc::DOC_QUANTIZATION;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct QuantizedCodes {
    signature: UserDefined,
}

fn int8_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Int8, true)))
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUANTIZATION,
        "The codes of a quantized row unpacked, one signed Int8 per value: code − 2^(bits−1), so \
         that value = offset + (code + 2^(bits−1)) · scale of the value's group, or code · \
         scale for the symmetric schemes. For histograms of codes and for tools that want one \
         byte per weight. NULL for NULL and for the GGUF schemes, whose blocks interleave \
         codes and scales (dequantize reads those).",
        "quantized_codes(q)",
    )
    .with_sql_example(
        "```sql\n> SELECT c, count(*) FROM (SELECT unnest(quantized_codes(quantize(weights, 4))) AS c FROM layers) GROUP BY c;\n```",
    )
    .with_argument("q", "A quantized value, as returned by quantize.")
    .with_related_udf("quantize")
    .with_related_udf("dequantize")
    .build()
});

const PARAMETERS: Parameters = Parameters::new(&[("q", ArgType::Quantized)], 1);

impl ScalarUDFImpl for QuantizedCodes {
    fn name(&self) -> &str {
        "quantized_codes"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        PARAMETERS.coerce(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(int8_list())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        let column = QuantizedColumn::new(&array)?;
        let mut rows = Vec::with_capacity(column.len());
        for row in 0..column.len() {
            let q = column
                .get(row)
                .map_err(|e| row_error(self.name(), row, e))?
                .filter(|q| q.scheme.gguf().is_none());
            rows.push(q);
        }
        // Every code goes straight into one buffer of the final size (reserved, not zeroed).
        let total: usize = rows.iter().flatten().map(|q| q.len as usize).sum();
        if i32::try_from(total).is_err() {
            return Err(DataFusionError::Execution(format!(
                "{}: {total} codes in one batch, more than a list column holds (2^31); use \
                 smaller batches",
                self.name()
            )));
        }
        let mut codes = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(rows.len() + 1);
        offsets.push(0i32);
        for (row, q) in rows.iter().enumerate() {
            if let Some(q) = q {
                signed_codes(q, &mut codes).map_err(|e| row_error(self.name(), row, e))?;
            }
            offsets.push(codes.len() as i32);
        }
        let nulls = NullBuffer::from_iter(rows.iter().map(Option::is_some));
        let values = Int8Array::new(ScalarBuffer::from(Buffer::from_vec(codes)), None);
        let DataType::List(item) = int8_list() else {
            unreachable!()
        };
        Ok(ColumnarValue::Array(Arc::new(ListArray::new(
            item,
            OffsetBuffer::new(offsets.into()),
            Arc::new(values),
            (nulls.null_count() > 0).then_some(nulls),
        ))))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(QuantizedCodes::default());
