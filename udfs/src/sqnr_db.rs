//! `sqnr_db(a, b)`: signal-to-quantization-noise ratio in decibels.

use std::sync::LazyLock;

use datafusion::logical_expr::Documentation;

use crate::kernels::metrics::PairSums;
use crate::support::doc::DOC_QUALITY;
use crate::support::pair_metric::PairMetric;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUALITY,
        "Signal-to-quantization-noise ratio 10·log10(Σa² / Σ(a−b)²) in dB, where a is the original. Infinity for an exact reconstruction; NULL when either row is NULL or empty; lists of different lengths are an error.",
        "sqnr_db(a, b)",
    )
    .with_sql_example("```sql\n> SELECT sqnr_db(weights, dequantize(quantize(weights, 4))) FROM layers;\n```")
    .with_argument("a", "List of floats: the original row.")
    .with_argument("b", "List of floats of the same length: the reconstruction.")
    .build()
});

crate::support::register::scalar_udf!(PairMetric::new("sqnr_db", PairSums::sqnr_db, || {
    &DOCUMENTATION
}));
