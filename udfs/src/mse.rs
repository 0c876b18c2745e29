//! `mse(a, b)`: mean squared error between two rows.

use std::sync::LazyLock;

use datafusion::logical_expr::Documentation;

use crate::kernels::metrics::PairSums;
use crate::support::doc::DOC_QUALITY;
use crate::support::pair_metric::PairMetric;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUALITY,
        "Mean squared error between two rows of the same length, computed in f64. NULL when either row is NULL or empty; lists of different lengths are an error.",
        "mse(a, b)",
    )
    .with_sql_example("```sql\n> SELECT mse(weights, dequantize(quantize(weights, 4))) FROM layers;\n```")
    .with_argument("a", "List of floats: the original row.")
    .with_argument("b", "List of floats of the same length: the reconstruction.")
    .build()
});

crate::support::register::scalar_udf!(PairMetric::new("mse", PairSums::mse, || &DOCUMENTATION));
