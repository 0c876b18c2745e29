//! `cosine_similarity(a, b)`: the cosine of the angle between two rows.

use std::sync::LazyLock;

use datafusion::logical_expr::Documentation;

use crate::kernels::metrics::PairSums;
use crate::support::doc::DOC_QUALITY;
use crate::support::pair_metric::PairMetric;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUALITY,
        "Cosine similarity of two rows of the same length, computed in f64: 1 when b equals a (rows of zeros included), NULL when either row is NULL or empty or one side is all zeros and the other is not, otherwise clamped to [−1, 1] (the definition of sums_cosine). Lists of different lengths are an error.",
        "cosine_similarity(a, b)",
    )
    .with_sql_example("```sql\n> SELECT cosine_similarity(weights, dequantize(quantize(weights, 4))) FROM layers;\n```")
    .with_argument("a", "List of floats: the original row.")
    .with_argument("b", "List of floats of the same length: the reconstruction.")
    .build()
});

crate::support::register::scalar_udf!(PairMetric::new(
    "cosine_similarity",
    PairSums::cosine,
    || &DOCUMENTATION
));
