//! `quant_error(weights, bits [, group_size [, scheme]])`: how much quantizing a row costs,
//! measured without building the quantized column.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float64Builder, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::quantized::{QuantizedRow, Quantizer, stored_bytes};
use crate::support::args::UserDefined;
use crate::support::args::row_error;
use crate::support::doc::{DOC_QUALITY, scheme_list};
use crate::support::quant_args::{self, IMPORTANCE_DOC, QuantRows};

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct QuantError {
    signature: UserDefined,
}

const FIELDS: [&str; 5] = [
    "cosine",
    "mse",
    "sqnr_db",
    "max_abs_error",
    "compression_ratio",
];

fn fields() -> Fields {
    FIELDS
        .iter()
        .map(|name| Field::new(*name, DataType::Float64, true))
        .collect()
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUALITY,
        "Quantizes and reconstructs a row in scratch memory and reports {cosine, mse, sqnr_db, \
         max_abs_error, compression_ratio} (the ratio against the input's own width: 4 bytes a \
         value for Float32 lists). Same arguments and errors as quantize.",
        "quant_error(weights, bits [, group_size [, scheme [, importance]]])",
    )
    .with_sql_example(
        "```sql\n> SELECT b, avg(quant_error(weights, b)['cosine']) FROM layers, (VALUES (2), (4), (8)) t(b) GROUP BY b;\n```",
    )
    .with_argument("weights", "List of Float16, Float32 or Float64: one row of a tensor.")
    .with_argument("bits", "Code width, as for quantize.")
    .with_argument("group_size", "Values per group, as for quantize.")
    .with_argument("scheme", scheme_list())
    .with_argument("importance", IMPORTANCE_DOC)
    .with_related_udf("quantize")
    .build()
});

fn source_bytes_per_value(weights: &DataType) -> f64 {
    let item = match weights {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => f.data_type(),
        _ => &DataType::Float32,
    };
    item.primitive_width().unwrap_or(4) as f64
}

impl ScalarUDFImpl for QuantError {
    fn name(&self) -> &str {
        "quant_error"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        quant_args::QUANT_ARGS.coerce(self.name(), arg_types)
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
        let width = source_bytes_per_value(weights.data_type());
        let importance = quant_args::importance_array(&args)?;
        let mut rows = QuantRows::new(self.name(), &weights, &args.args, importance.as_ref())?;
        let mut builders: Vec<Float64Builder> = FIELDS
            .iter()
            .map(|_| Float64Builder::with_capacity(rows.len()))
            .collect();
        let mut valid = Vec::with_capacity(rows.len());
        let mut quantizer = Quantizer::default();
        let mut q = QuantizedRow::default();
        for row in 0..rows.len() {
            let Some(r) = rows.get(row)? else {
                builders.iter_mut().for_each(|b| b.append_null());
                valid.push(false);
                continue;
            };
            let x = r.values;
            // One pass: each piece is quantized, rebuilt and compared while in cache.
            let (sums, _) = quantizer
                .quantize_measured_weighted(x, &r.spec, r.importance, &mut q)
                .map_err(|e| row_error(self.name(), row, e))?;
            let stored = stored_bytes(q.codes.len(), q.scales.len(), q.offsets.len());
            let ratio = (stored > 0).then(|| x.len() as f64 * width / stored as f64);
            let figures = [
                sums.cosine(),
                sums.mse(),
                sums.sqnr_db(),
                sums.max_abs_error(),
                ratio,
            ];
            for (b, v) in builders.iter_mut().zip(figures) {
                b.append_option(v);
            }
            valid.push(true);
        }
        let columns: Vec<ArrayRef> = builders
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let nulls = NullBuffer::from(valid);
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        Ok(ColumnarValue::Array(Arc::new(StructArray::new(
            fields(),
            columns,
            nulls,
        ))))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(QuantError::default());
