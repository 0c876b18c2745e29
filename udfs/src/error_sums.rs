//! `error_sums(a, b)`: the mergeable sums behind every quality metric of a pair of rows, so that
//! whole-tensor figures can be computed from per-row results with SUM and MAX (a model pipeline
//! measures each row as it streams past, then aggregates per tensor).

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float64Builder, Int64Builder, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::common::{FloatRows, QuantizedColumn, coerce_float_list, coerce_quantized, row_error};
use crate::doc::DOC_QUALITY;
use crate::kernels::metrics::PairSums;
use crate::kernels::quantized::Quantizer;
use crate::pair_metric::coerce_pair;

/// The second argument: a row of values, or a quantized row to reconstruct.
enum Second<'a> {
    Floats(FloatRows<'a>),
    Quantized(QuantizedColumn<'a>),
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ErrorSums {
    signature: Signature,
}

impl Default for ErrorSums {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// The struct's fields, in order.
pub const FIELDS: [&str; 6] = ["n", "dot", "a_sq", "b_sq", "err_sq", "max_abs_error"];

pub fn error_sums_type() -> DataType {
    let fields: Fields = FIELDS
        .iter()
        .map(|&name| {
            let dt = if name == "n" {
                DataType::Int64
            } else {
                DataType::Float64
            };
            Field::new(name, dt, true)
        })
        .collect();
    DataType::Struct(fields)
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUALITY,
        "Sums of a pair of rows (f32 within blocks of 256 values, f64 across them): {n, dot = Σab, a_sq = Σa², b_sq = Σb², \
         err_sq = Σ(a−b)², max_abs_error}. They add up across rows, so whole-tensor metrics follow \
         from SUM and MAX: cosine = sums_cosine of the summed struct (Σdot / √(Σa_sq · Σb_sq) with \
         its edge cases), mse = Σerr_sq / Σn, \
         sqnr_db = 10·log10(Σa_sq / Σerr_sq). b may also be a quantized value (as returned by \
         quantize): it is reconstructed a cache-sized piece at a time, exactly as dequantize(b) \
         would rebuild it, without building that column. NULL when either row is NULL; rows of different lengths are an \
         error.",
        "error_sums(a, b)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, sum(e['dot']) / sqrt(sum(e['a_sq']) * sum(e['b_sq'])) AS cosine\n  FROM (SELECT layer, error_sums(weights, quantize(weights, 4)) AS e FROM layers)\n  GROUP BY layer;\n```",
    )
    .with_argument("a", "List of Float16, Float32 or Float64: the reference row.")
    .with_argument(
        "b",
        "The reconstruction: a list of floats of the same length, or a quantized value.",
    )
    .build()
});

impl ScalarUDFImpl for ErrorSums {
    fn name(&self) -> &str {
        "error_sums"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        // (weights, q): the reconstruction is rebuilt row by row in scratch memory, never
        // materialised as a column.
        if let [a, q @ DataType::Struct(_)] = arg_types {
            return Ok(vec![
                coerce_float_list(self.name(), "a", a)?,
                coerce_quantized(self.name(), "b", q)?,
            ]);
        }
        coerce_pair(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(error_sums_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = args.args[0].to_array(args.number_rows)?;
        let b = args.args[1].to_array(args.number_rows)?;
        let a = FloatRows::new(&a, self.name(), "a")?;
        let reconstruction = match b.data_type() {
            DataType::Struct(_) => Second::Quantized(QuantizedColumn::new(&b)?),
            _ => Second::Floats(FloatRows::new(&b, self.name(), "b")?),
        };
        let mut quantizer = Quantizer::default();
        let rows = a.len();
        let mut out = SumsBuilder::with_capacity(rows);
        for row in 0..rows {
            let sums = match (&reconstruction, a.row(row)) {
                (_, None) => None,
                (Second::Floats(b), Some(x)) => b.row(row).map(|y| PairSums::of(x, y)),
                (Second::Quantized(q), Some(x)) => q
                    .get(row)
                    .map_err(|e| row_error(self.name(), row, e))?
                    // Rebuilt a cache-sized piece at a time, never as a whole row.
                    .map(|q| quantizer.measure(x, &q)),
            };
            match sums {
                Some(s) => out.append(&s.map_err(|e| row_error(self.name(), row, e))?),
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(out.finish()))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

/// Builds a column of `error_sums` structs.
pub(crate) struct SumsBuilder {
    n: Int64Builder,
    sums: [Float64Builder; 5],
    valid: Vec<bool>,
}

impl SumsBuilder {
    pub(crate) fn with_capacity(rows: usize) -> Self {
        Self {
            n: Int64Builder::with_capacity(rows),
            sums: std::array::from_fn(|_| Float64Builder::with_capacity(rows)),
            valid: Vec::with_capacity(rows),
        }
    }

    pub(crate) fn append(&mut self, s: &PairSums) {
        self.n.append_value(s.n as i64);
        for (builder, value) in
            self.sums
                .iter_mut()
                .zip([s.dot, s.aa, s.bb, s.sq_err, s.max_abs_err])
        {
            builder.append_value(value);
        }
        self.valid.push(true);
    }

    pub(crate) fn append_null(&mut self) {
        self.n.append_null();
        self.sums.iter_mut().for_each(|b| b.append_null());
        self.valid.push(false);
    }

    pub(crate) fn finish(mut self) -> ArrayRef {
        let DataType::Struct(fields) = error_sums_type() else {
            unreachable!()
        };
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.n.finish())];
        columns.extend(
            self.sums
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        let nulls = NullBuffer::from(self.valid);
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        Arc::new(StructArray::new(fields, columns, nulls))
    }
}
