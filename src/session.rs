//! Sessions with every ArrowQuant function registered.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
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
/// keeps memory flat and the data in cache.
pub fn pipeline_context() -> SessionContext {
    let ctx = SessionContext::new_with_config(config().with_batch_size(PIPELINE_BATCH_ROWS));
    arrowquant_udfs::register_all(&ctx);
    crate::tables::register_tables(&ctx);
    ctx
}

/// Rows per batch in [`pipeline_context`] (measured: 128 and 64 beat 256 and the default 8192
/// on the 2 GB benchmark model; see benches/end_to_end.sh).
pub const PIPELINE_BATCH_ROWS: usize = 128;

/// The session configuration ArrowQuant runs with.
pub fn config() -> SessionConfig {
    SessionConfig::new().with_information_schema(true)
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
