//! `quantize(weights, bits [, group_size [, scheme]])`: a row of weights to its stored form.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Float16Builder, ListBuilder, StringBuilder, StructArray, UInt8Builder,
    UInt32Builder,
};
use datafusion::arrow::buffer::{Buffer, NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::common::{FloatRows, float16_list, quantized_fields, quantized_type, row_error};
use crate::doc::{DOC_QUANTIZATION, scheme_list};
use crate::kernels::quantized::{QuantizedRow, Quantizer};
use crate::quant_args::{self, SpecArgs};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Quantize {
    signature: Signature,
}

impl Default for Quantize {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUANTIZATION,
        "Quantizes a row of weights. Returns a struct {codes, scales, offsets, bits, group_size, \
         len, scheme}: packed codes (low bits first) or llama.cpp's blocks for the GGUF schemes, \
         and one f16 scale (and offset, the value of code 0) per group. The default scheme \
         'asym' searches each group's clipping range and refines scale and offset by least \
         squares. A NULL row or argument gives NULL; NaN or ±Inf values are an error.",
        "quantize(weights, bits [, group_size [, scheme]])",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, row, quantize(weights, 4) AS q FROM layers;\n\
         > SELECT quantize(weights, 4, 32, 'q4_0')['codes'] FROM layers;\n```",
    )
    .with_argument("weights", "List of Float16, Float32 or Float64: one row of a tensor.")
    .with_argument("bits", "Code width: 2, 3, 4, 5, 6 or 8 for asym, sym, asym_minmax and sym_minmax (7 is refused: it has no packing); the GGUF schemes fix theirs: 4 for q4_0 and q4_1, 5 for q5_0 and q5_1, 8 for q8_0.")
    .with_argument(
        "group_size",
        "Values per group, 16 to 4096 (default 64), or 'row' for one group per row. GGUF schemes use 32.",
    )
    .with_argument("scheme", scheme_list())
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
        quant_args::coerce(self.name(), arg_types)
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
        let rows = FloatRows::new(&weights, self.name(), "weights")?;
        let mut spec_args = SpecArgs::new(&args.args)?;
        let mut out = QuantizedBuilder::with_capacity(rows.len());
        let mut quantizer = Quantizer::default();
        let mut row_out = QuantizedRow::default();
        for row in 0..rows.len() {
            let spec = spec_args
                .spec(row)
                .map_err(|e| row_error(self.name(), row, e))?;
            match (rows.row(row), spec) {
                (Some(x), Some(spec)) => {
                    quantizer
                        .quantize(x, &spec, &mut row_out)
                        .map_err(|e| row_error(self.name(), row, e))?;
                    out.append(&row_out, spec.bits, x.len() as u32, spec.scheme.name());
                }
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(out.finish()?))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

/// Builds a column of quantized structs.
pub(crate) struct QuantizedBuilder {
    /// The codes column's bytes and offsets, built by hand to reserve room for them at once.
    code_bytes: Vec<u8>,
    code_offsets: Vec<i32>,
    scales: ListBuilder<Float16Builder>,
    offsets: ListBuilder<Float16Builder>,
    bits: UInt8Builder,
    group_size: UInt32Builder,
    len: UInt32Builder,
    scheme: StringBuilder,
    valid: Vec<bool>,
}

impl QuantizedBuilder {
    pub(crate) fn with_capacity(rows: usize) -> Self {
        let f16_list = || {
            let DataType::List(item) = float16_list() else {
                unreachable!()
            };
            ListBuilder::with_capacity(Float16Builder::new(), rows).with_field(item)
        };
        Self {
            code_bytes: Vec::new(),
            code_offsets: {
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0);
                offsets
            },
            scales: f16_list(),
            offsets: f16_list(),
            bits: UInt8Builder::with_capacity(rows),
            group_size: UInt32Builder::with_capacity(rows),
            len: UInt32Builder::with_capacity(rows),
            scheme: StringBuilder::with_capacity(rows, rows * 4),
            valid: Vec::with_capacity(rows),
        }
    }

    pub(crate) fn append(&mut self, q: &QuantizedRow, bits: u8, len: u32, scheme: &str) {
        if self.valid.is_empty() {
            // Rows of a column are usually alike: room for as many as the first one, at once,
            // rather than doubling through tens of megabytes.
            self.code_bytes
                .reserve(q.codes.len() * self.valid.capacity());
        }
        self.code_bytes.extend_from_slice(&q.codes);
        self.push_code_offset();
        self.scales.values().append_slice(&q.scales);
        self.scales.append(true);
        self.offsets.values().append_slice(&q.offsets);
        self.offsets.append(true);
        self.bits.append_value(bits);
        self.group_size.append_value(q.group_size);
        self.len.append_value(len);
        self.scheme.append_value(scheme);
        self.valid.push(true);
    }

    /// Ends a row of codes (an offset past 2 GiB saturates; `finish` refuses the column).
    fn push_code_offset(&mut self) {
        let end = i32::try_from(self.code_bytes.len()).unwrap_or(i32::MAX);
        self.code_offsets.push(end);
    }

    /// A NULL struct, with NULL fields so that `q['bits']` of a NULL row is NULL too.
    pub(crate) fn append_null(&mut self) {
        self.push_code_offset();
        self.scales.append(false);
        self.offsets.append(false);
        self.bits.append_null();
        self.group_size.append_null();
        self.len.append_null();
        self.scheme.append_null();
        self.valid.push(false);
    }

    pub(crate) fn finish(mut self) -> Result<ArrayRef> {
        if i32::try_from(self.code_bytes.len()).is_err() {
            return Err(DataFusionError::Execution(format!(
                "{} bytes of codes in one batch: more than a column of binary values holds \
                 (2 GiB); use smaller batches",
                self.code_bytes.len()
            )));
        }
        let nulls = NullBuffer::from(self.valid);
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        let codes = BinaryArray::new(
            OffsetBuffer::new(self.code_offsets.into()),
            Buffer::from_vec(self.code_bytes),
            nulls.clone(),
        );
        let columns: Vec<ArrayRef> = vec![
            Arc::new(codes),
            Arc::new(self.scales.finish()),
            Arc::new(self.offsets.finish()),
            Arc::new(self.bits.finish()),
            Arc::new(self.group_size.finish()),
            Arc::new(self.len.finish()),
            Arc::new(self.scheme.finish()),
        ];
        Ok(Arc::new(StructArray::new(
            quantized_fields(),
            columns,
            nulls,
        )))
    }
}
