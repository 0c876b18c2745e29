//! The session every client of a server shares.

use datafusion::common::Result;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;

use crate::root::Root;

/// A session with every ArrowQuant function and table, paths confined to `root`, and operators
/// limited to `memory_bytes` between them. Nothing spills to disk: a query past the limit fails
/// with DataFusion's "resources exhausted" instead of writing outside the root or filling it.
pub fn context(root: &Root, memory_bytes: usize) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(memory_bytes, 1.0)
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()?;
    let state = SessionStateBuilder::new()
        .with_config(crate::session::config())
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    let ctx = SessionContext::new_with_state(root.clone().confine(state));
    arrowquant_udfs::register_all(&ctx);
    crate::tables::register_tables(&ctx);
    Ok(ctx)
}
