//! `error_sums(a, b)`: the mergeable sums behind every quality metric of a pair of rows, so that
//! whole-tensor figures can be computed from per-row results with SUM and MAX (a model pipeline
//! measures each row as it streams past, then aggregates per tensor).

use std::sync::LazyLock;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::metrics::PairSums;
use crate::kernels::quantized::Quantizer;
use crate::layout::error_sums::{SumsBuilder, error_sums_type};
use crate::layout::quantized::{QuantizedColumn, coerce_quantized};
use crate::support::args::UserDefined;
use crate::support::args::{FloatRows, coerce_float_list, row_error};
use crate::support::doc::DOC_QUALITY;
use crate::support::pair_metric::PAIR;

/// The second argument: a row of values, or a quantized row to reconstruct.
enum Second<'a> {
    Floats(FloatRows<'a>),
    Quantized(QuantizedColumn<'a>),
}

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct ErrorSums {
    signature: UserDefined,
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
        PAIR.coerce(self.name(), arg_types)
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

crate::support::register::scalar_udf!(ErrorSums::default());
