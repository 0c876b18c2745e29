//! Sessions with every ArrowQuant function registered.

use std::sync::Arc;

use arrowquant_udfs::quantize_measured::QuantizeMeasured;
use datafusion::common::Result;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_cli::catalog::DynamicObjectStoreCatalog;
use datafusion_cli::object_storage::instrumented::InstrumentedObjectStoreRegistry;

/// A plain session with every ArrowQuant function registered.
pub fn context() -> SessionContext {
    let ctx = SessionContext::new_with_config(config());
    arrowquant_udfs::register_all(&ctx);
    crate::tables::register_tables(&ctx);
    ctx
}

/// A session for the model pipeline: batches of at most 128 rows, so that operators that
/// gather rows (the strategy join) never build buffers of more than a few megabytes, which
/// keeps memory flat and the data in cache. Its `quantize_measured` reports a refused row as
/// a value (`m['refused']`), so the query itself names the tensor and row.
pub fn pipeline_context() -> SessionContext {
    let ctx = SessionContext::new_with_config(config().with_batch_size(PIPELINE_BATCH_ROWS));
    arrowquant_udfs::register_all(&ctx);
    ctx.register_udf(ScalarUDF::new_from_impl(
        QuantizeMeasured::reporting_refusals(),
    ));
    crate::tables::register_tables(&ctx);
    ctx
}

/// Rows per batch in [`pipeline_context`] (measured: 128 and 64 beat 256 and the default 8192
/// on the 2 GB benchmark model; see benches/end_to_end.sh).
pub const PIPELINE_BATCH_ROWS: usize = 128;

/// The session configuration ArrowQuant runs with.
///
/// Leaf-expression pushdown is off: in DataFusion 55 it rewrites `m['quantized']` and
/// `m['error_sums']` of `m = quantize_measured(...)` into two calls of quantize_measured, one
/// per field, so every row was quantized twice (apache/datafusion#23655, fixed upstream after
/// 55; see also #25329). Our plans read weights from our own table functions, which gain
/// nothing from that pushdown.
pub fn config() -> SessionConfig {
    let mut config = SessionConfig::new().with_information_schema(true);
    config
        .options_mut()
        .optimizer
        .enable_leaf_expression_pushdown = false;
    config
}

/// A session for the SQL shell: every function, plus files queryable by path
/// (`SELECT * FROM 'weights.parquet'`) as `datafusion-cli` allows.
pub async fn shell_context(
    registry: Arc<InstrumentedObjectStoreRegistry>,
) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(registry)
        .build_arc()?;
    let ctx = SessionContext::new_with_config_rt(config(), runtime).enable_url_table();
    ctx.refresh_catalogs().await?;
    ctx.register_catalog_list(Arc::new(DynamicObjectStoreCatalog::new(
        ctx.state().catalog_list().clone(),
        ctx.state_weak_ref(),
    )));
    arrowquant_udfs::register_all(&ctx);
    crate::tables::register_tables(&ctx);
    Ok(ctx)
}
