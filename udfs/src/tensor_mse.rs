//! `tensor_mse(a, b)`: mean squared error of a whole tensor, over its rows.

use std::sync::LazyLock;

use datafusion::logical_expr::Documentation;

use crate::kernels::metrics::PairSums;
use crate::support::doc::DOC_QUALITY;
use crate::support::pair_aggregate::PairAggregate;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUALITY,
        "Mean squared error over every value of two tensors given as rows, computed in f64 from mergeable sums. NULL rows are skipped; NULL when there are no values; rows of different lengths are an error.",
        "tensor_mse(a, b)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, tensor_mse(weights, dequantize(quantize(weights, 4))) FROM layers GROUP BY layer;\n```",
    )
    .with_argument("a", "List of floats: a row of the original tensor.")
    .with_argument("b", "List of floats of the same length: its reconstruction.")
    .build()
});

crate::support::register::aggregate_udf!(PairAggregate::new("tensor_mse", PairSums::mse, || {
    &DOCUMENTATION
}));
