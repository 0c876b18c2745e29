//! The SQL the pipeline runs. Everything a run computes is one of these queries over the
//! registered functions and three tables it registers: `strategy` (one row per tensor: action,
//! bits, group, scheme), `tensors` (`safetensors_info` of the model) and, for the report,
//! `row_errors` (the per-row error sums the quantization query produced).

use arrowquant_udfs::kernels::scheme::GroupSize;

/// A string literal.
pub fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A group size as the `group_size` argument of `quantize`: `64` or `'row'`.
pub fn group_literal(group: GroupSize) -> String {
    match group {
        GroupSize::Fixed(g) => g.to_string(),
        GroupSize::Row => sql_string("row"),
    }
}

/// Quantizes every tensor of the strategy (or only `layers`, pushed down to the scan so other
/// tensors are not read), keeps the others' bytes, and measures each row against its
/// reconstruction.
pub fn quantize_sql(source: &str, layers: Option<&[String]>) -> String {
    let and_filter = match layers {
        Some([]) => " AND false".to_string(),
        Some(layers) => format!(
            " AND w.layer IN ({})",
            layers
                .iter()
                .map(|l| sql_string(l))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => String::new(),
    };
    // Two branches, so that neither carries the other's column through the join: quantized
    // tensors need only their values, kept tensors only their bytes. quantize_measured
    // gives each row's error sums from the same pass over its values, and (the pipeline's
    // variant, see session::pipeline_context) why a row was refused.
    format!(
        "WITH quantized AS (
  SELECT w.layer, w.row, w.shape, w.dtype,
         quantize_measured(w.weights, s.bits, s.group_size, s.scheme) AS m
  FROM strategy s JOIN read_safetensors({source}) w ON w.layer = s.layer
  WHERE s.action = 'quantize'{and_filter}
)
SELECT layer, row, shape, dtype, m['quantized'] AS q, CAST(NULL AS BYTEA) AS data,
       m['error_sums'] AS error,
       stored_bytes(m['quantized']) AS stored_bytes, m['refused'] AS refused
FROM quantized
UNION ALL
SELECT w.layer, w.row, w.shape, w.dtype, NULL AS q, w.data,
       NULL AS error, NULL AS stored_bytes, NULL AS refused
FROM strategy s JOIN read_safetensors({source}) w ON w.layer = s.layer
WHERE s.action = 'keep'{and_filter}",
        source = sql_string(source),
    )
}

/// One row per tensor: its settings and whole-tensor quality, from the per-row sums.
pub const REPORT_SQL: &str = "SELECT s.layer, t.dtype, t.shape, t.elements, s.action, s.bits,
       s.group_size, s.scheme, s.reason, s.fallback_from,
       CASE WHEN s.action = 'keep' THEN 1.0
            ELSE sums_cosine(named_struct('n', sum(e.error['n']), 'dot', sum(e.error['dot']),
                   'a_sq', sum(e.error['a_sq']), 'b_sq', sum(e.error['b_sq']),
                   'err_sq', sum(e.error['err_sq']))) END
         AS cosine,
       CASE WHEN s.action = 'keep' THEN NULL
            ELSE 10 * log10(sum(e.error['a_sq']) / NULLIF(sum(e.error['err_sq']), 0)) END
         AS sqnr_db,
       CASE WHEN s.action = 'keep' THEN 0.0 ELSE max(e.error['max_abs_error']) END
         AS max_abs_error,
       CASE WHEN s.action = 'keep' THEN 0.0
            ELSE sum(e.error['err_sq']) / NULLIF(sum(e.error['n']), 0) END AS mse,
       t.bytes AS bytes_before,
       CASE WHEN s.action = 'keep' THEN t.bytes ELSE sum(e.stored_bytes) END AS bytes_after
FROM strategy s
JOIN tensors t ON t.layer = s.layer
LEFT JOIN row_errors e ON e.layer = s.layer
GROUP BY s.layer, t.dtype, t.shape, t.elements, s.action, s.bits, s.group_size, s.scheme,
         s.reason, s.fallback_from, s.position, t.bytes
ORDER BY s.position";
