//! `quantize_measured(weights, bits [, group_size [, scheme]])`: `quantize` and the
//! `error_sums` of the result in one pass over the weights.
//!
//! A pipeline over a whole model registers [`QuantizeMeasured::reporting_refusals`] instead:
//! a row the quantizer refuses is then a value of the query (field `refused`), with the
//! query's own tensor and row beside it, rather than an error that ends the query.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Float64Builder, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::quantized::{QuantizedRow, Quantizer};
use crate::layout::error_sums::{SumsBuilder, error_sums_type};
use crate::layout::quantized::QuantizedBuilder;
use crate::layout::quantized::quantized_type;
use crate::layout::refusal::{RefusalBuilder, refusal_fields};
use crate::support::args::{UserDefined, row_error};
use crate::support::doc::{DOC_QUANTIZATION, scheme_list};
use crate::support::quant_args::{self, IMPORTANCE_DOC, QuantRows};

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct QuantizeMeasured {
    signature: UserDefined,
    /// Refused rows are values (the `refused` field) instead of errors.
    refusals: bool,
}

impl QuantizeMeasured {
    /// The variant for pipelines over whole models: a row the quantizer refuses gives NULL
    /// `quantized` and `error_sums` and a third field, `refused`, says why: `{reason,
    /// beyond_f16, max_abs}` (the kernel's message; whether no f16 scale or offset can hold
    /// the row, which a pipeline answers by keeping the tensor as stored; the row's largest
    /// magnitude). `refused` is NULL for every row that quantizes. Invalid arguments are
    /// still errors.
    pub fn reporting_refusals() -> Self {
        Self {
            refusals: true,
            ..Self::default()
        }
    }

    fn fields(&self) -> Fields {
        let mut fields = vec![
            Field::new("quantized", quantized_type(), true),
            Field::new("error_sums", error_sums_type(), true),
            Field::new("weighted_err_sq", DataType::Float64, true),
        ];
        if self.refusals {
            fields.push(Field::new(
                "refused",
                DataType::Struct(refusal_fields()),
                true,
            ));
        }
        Fields::from(fields)
    }
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUANTIZATION,
        "Quantizes a row and measures the result in the same pass: a struct {quantized, \
         error_sums, weighted_err_sq} whose first two are, bit for bit, {quantize(weights, ...), \
         error_sums(weights, quantize(weights, ...))}, and weighted_err_sq Σ importance·(w − ŵ)² \
         when importance is given (else NULL). Each cache-sized piece of the row is quantized, rebuilt and \
         compared while it is in cache, so the weights are read from memory once instead of \
         twice. A NULL row or argument gives NULL; NaN or ±Inf values are an error. (DataFusion \
         55 evaluates it once per field read unless datafusion.optimizer.\
         enable_leaf_expression_pushdown is false, as in ArrowQuant's own sessions.)",
        "quantize_measured(weights, bits [, group_size [, scheme [, importance]]])",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, m['quantized'] AS q,\n         m['error_sums']['dot'] / sqrt(m['error_sums']['a_sq'] * m['error_sums']['b_sq']) AS cosine\n  FROM (SELECT layer, quantize_measured(weights, 4) AS m FROM layers);\n```",
    )
    .with_argument("weights", "List of Float16, Float32 or Float64: one row of a tensor.")
    .with_argument("bits", "Code width, as for quantize.")
    .with_argument("group_size", "Values per group, as for quantize (default 64).")
    .with_argument("scheme", scheme_list())
    .with_argument("importance", IMPORTANCE_DOC)
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
        quant_args::QUANT_ARGS.coerce(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(self.fields()))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        quant_args::validate_literals(self.name(), args.scalar_arguments)?;
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Struct(self.fields()),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let weights = args.args[0].to_array(args.number_rows)?;
        let importance = quant_args::importance_array(&args)?;
        let mut rows = QuantRows::new(self.name(), &weights, &args.args, importance.as_ref())?;
        let mut quantized = QuantizedBuilder::with_capacity(rows.len());
        let mut sums = SumsBuilder::with_capacity(rows.len());
        let mut weighted = Float64Builder::with_capacity(rows.len());
        let mut refused = self.refusals.then(RefusalBuilder::default);
        let mut quantizer = Quantizer::default();
        let mut row_out = QuantizedRow::default();
        for row in 0..rows.len() {
            let measured = match rows.get(row)? {
                Some(r) => match quantizer.quantize_measured_weighted(
                    r.values,
                    &r.spec,
                    r.importance,
                    &mut row_out,
                ) {
                    Ok((s, w)) => Some((s, w, r.values.len(), r.spec)),
                    Err(e) => match refused.as_mut() {
                        Some(refused) => {
                            refused.append(&e, r.values);
                            quantized.append_null();
                            sums.append_null();
                            weighted.append_null();
                            continue;
                        }
                        None => return Err(row_error(self.name(), row, e)),
                    },
                },
                _ => None,
            };
            match measured {
                Some((s, w, len, spec)) => {
                    quantized.append(&row_out, spec.bits, len as u32, spec.scheme.name());
                    sums.append(&s);
                    weighted.append_option(w);
                }
                None => {
                    quantized.append_null();
                    sums.append_null();
                    weighted.append_null();
                }
            }
            if let Some(refused) = refused.as_mut() {
                refused.append_null();
            }
        }
        let mut columns = vec![
            quantized.finish()?,
            sums.finish(),
            Arc::new(weighted.finish()) as ArrayRef,
        ];
        columns.extend(refused.map(RefusalBuilder::finish));
        // The struct itself is never NULL: its fields are, so that m['quantized'] of a NULL
        // row is a NULL quantized value.
        Ok(ColumnarValue::Array(Arc::new(StructArray::new(
            self.fields(),
            columns,
            None,
        ))))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(QuantizeMeasured::default());

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Float32Type;
    use datafusion::logical_expr::ScalarUDF;
    use datafusion::prelude::SessionContext;

    use super::*;

    const ROWS: &str = "SELECT * FROM (VALUES (1, [0.5, -0.25, 1.0, 0.0]), \
        (2, [0.5, 'NaN', 1.0, 0.0]), (3, [3.0e6, 1.0, -2.0, 0.5])) AS t(id, w)";

    #[tokio::test]
    async fn the_pipeline_variant_reports_refused_rows_as_values() {
        let ctx = SessionContext::new();
        ctx.register_udf(ScalarUDF::new_from_impl(
            QuantizeMeasured::reporting_refusals(),
        ));
        let sql = format!(
            "SELECT m['quantized'] IS NULL AS no_q, m['refused'] AS r
             FROM (SELECT id, quantize_measured(CAST(w AS FLOAT[]), 4, 'row') AS m FROM ({ROWS})) ORDER BY id"
        );
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let b = &batches[0];
        let no_q = b.column(0).as_boolean();
        let r = b.column(1).as_struct();
        assert_eq!(
            (0..3)
                .map(|i| (no_q.value(i), r.is_valid(i)))
                .collect::<Vec<_>>(),
            [(false, false), (true, true), (true, true)]
        );
        let reason = r.column(0).as_string::<i32>();
        let beyond = r.column(1).as_boolean();
        let max_abs = r.column(2).as_primitive::<Float32Type>();
        assert_eq!(reason.value(1), "non-finite value NaN at index 1");
        assert!(!beyond.value(1));
        assert_eq!(max_abs.value(1), 1.0);
        assert!(
            reason.value(2).contains("beyond the range of f16"),
            "{}",
            reason.value(2)
        );
        assert!(beyond.value(2));
        assert_eq!(max_abs.value(2), 3.0e6);
    }

    #[tokio::test]
    async fn the_sql_function_still_fails_on_a_refused_row() {
        let ctx = SessionContext::new();
        ctx.register_udf(ScalarUDF::new_from_impl(QuantizeMeasured::default()));
        let sql = format!(
            "SELECT quantize_measured(CAST(w AS FLOAT[]), 4, 'row') FROM ({ROWS}) WHERE id = 2"
        );
        let e = ctx.sql(&sql).await.unwrap().collect().await.unwrap_err();
        assert!(
            e.to_string()
                .contains("quantize_measured: row 0: non-finite value NaN at index 1"),
            "{e}"
        );
    }
}
