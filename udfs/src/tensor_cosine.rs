//! `tensor_cosine(a, b)`: cosine similarity of a whole tensor, over its rows.

use std::sync::LazyLock;

use datafusion::logical_expr::Documentation;

use crate::kernels::metrics::PairSums;
use crate::support::doc::DOC_QUALITY;
use crate::support::pair_aggregate::PairAggregate;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUALITY,
        "Cosine similarity of two whole tensors given as rows (the concatenation of every row), computed in f64 from mergeable sums. NULL rows are skipped; 1 when b equals a throughout, NULL when there are no values or one side is all zeros and the other is not (the definition of sums_cosine); rows of different lengths are an error.",
        "tensor_cosine(a, b)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, tensor_cosine(weights, dequantize(quantize(weights, 4))) FROM layers GROUP BY layer;\n```",
    )
    .with_argument("a", "List of floats: a row of the original tensor.")
    .with_argument("b", "List of floats of the same length: its reconstruction.")
    .build()
});

crate::support::register::aggregate_udf!(PairAggregate::new(
    "tensor_cosine",
    PairSums::cosine,
    || &DOCUMENTATION
));
