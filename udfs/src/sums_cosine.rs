//! `sums_cosine(sums)`: the cosine similarity behind a struct of error sums.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Builder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::metrics::PairSums;
use crate::support::args::UserDefined;
use crate::support::args::{check_arity, row_error};
use crate::support::doc::DOC_QUALITY;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct SumsCosine {
    signature: UserDefined,
}

/// The fields read, by name; any others (max_abs_error) are ignored.
const READ: [&str; 5] = ["n", "dot", "a_sq", "b_sq", "err_sq"];

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUALITY,
        "Cosine similarity from error sums: of one row pair (error_sums(a, b), \
         quantize_measured(...)['error_sums']) or of a whole tensor (a struct of their SUMs). The \
         definition every ArrowQuant cosine follows (cosine_similarity, tensor_cosine, the \
         quantize report, the Python batch API): 1 when b reproduces a exactly (err_sq = 0), \
         rows of zeros included; NULL when there are no values, or one side is all zeros and \
         the other is not; otherwise dot / (√a_sq · √b_sq), clamped to [−1, 1]. NaN or ±Inf sums \
         are an error naming the field. NULL for a NULL \
         struct or field.",
        "sums_cosine(sums)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, sums_cosine(named_struct('n', sum(e['n']), 'dot', sum(e['dot']),\n           'a_sq', sum(e['a_sq']), 'b_sq', sum(e['b_sq']), 'err_sq', sum(e['err_sq']))) AS cosine\n  FROM (SELECT layer, error_sums(weights, quantize(weights, 4)) AS e FROM layers)\n  GROUP BY layer;\n```",
    )
    .with_argument(
        "sums",
        "A struct with numeric fields n, dot, a_sq, b_sq and err_sq, as error_sums returns.",
    )
    .with_related_udf("error_sums")
    .build()
});

impl ScalarUDFImpl for SumsCosine {
    fn name(&self) -> &str {
        "sums_cosine"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        check_arity(self.name(), "(sums)", arg_types.len(), 1, 1)?;
        let DataType::Struct(fields) = &arg_types[0] else {
            return plan_err!(
                "{}: argument 'sums' must be a struct of error sums, got {}",
                self.name(),
                arg_types[0]
            );
        };
        for name in READ {
            match fields.find(name) {
                Some((_, f)) if f.data_type().is_numeric() || f.data_type().is_null() => {}
                Some((_, f)) => {
                    return plan_err!(
                        "{}: field '{name}' of 'sums' must be a number, got {}",
                        self.name(),
                        f.data_type()
                    );
                }
                None => {
                    return plan_err!(
                        "{}: argument 'sums' has no field '{name}' (it needs {})",
                        self.name(),
                        READ.join(", ")
                    );
                }
            }
        }
        Ok(arg_types.to_vec())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let sums = args.args[0].to_array(args.number_rows)?;
        let sums = sums.as_struct();
        let field = |name: &str, to: &DataType| -> Result<ArrayRef> {
            let column = sums
                .column_by_name(name)
                .expect("coerce_types checked the field");
            Ok(cast(column, to)?)
        };
        let n = field("n", &DataType::Int64)?;
        let n = n.as_primitive::<Int64Type>();
        let floats = ["dot", "a_sq", "b_sq", "err_sq"]
            .map(|name| field(name, &DataType::Float64))
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let [dot, aa, bb, sq_err] = [0, 1, 2, 3].map(|i| floats[i].as_primitive::<Float64Type>());
        let mut out = Float64Builder::with_capacity(sums.len());
        for row in 0..sums.len() {
            let valid = sums.is_valid(row)
                && n.is_valid(row)
                && [dot, aa, bb, sq_err].iter().all(|c| c.is_valid(row));
            // Sums of finite rows are finite: a NaN or ±Inf is a struct built by hand, and a
            // cosine from it would be NaN.
            if valid
                && let Some((name, value)) = ["dot", "a_sq", "b_sq", "err_sq"]
                    .iter()
                    .zip([dot, aa, bb, sq_err])
                    .map(|(name, c)| (name, c.value(row)))
                    .find(|(_, v)| !v.is_finite())
            {
                return Err(row_error(
                    self.name(),
                    row,
                    format!("field '{name}' of 'sums' is {value}, not a finite sum"),
                ));
            }
            let cosine = valid.then(|| PairSums {
                n: n.value(row).max(0) as usize,
                dot: dot.value(row),
                aa: aa.value(row),
                bb: bb.value(row),
                sq_err: sq_err.value(row),
                max_abs_err: 0.0,
            });
            out.append_option(cosine.and_then(|s| s.cosine()));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

crate::support::register::scalar_udf!(SumsCosine::default());
