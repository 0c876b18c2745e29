//! Defences against input that makes a dependency panic.
//!
//! The parquet crate panics on some corrupt files instead of returning an error (an
//! out-of-range slice in its footer or page decoding). What can be checked up front is checked
//! by [`check_parquet`] (`arrowquant_formats::parquet_file::check`): the magic bytes, the footer
//! length against the file size, and the metadata decoded by the crate's own reader.
//! Corruption inside the data pages only shows while a query runs, so [`catch_panics`] turns a
//! panic anywhere in a command's reading into an error that names what was being read; the
//! panic hook stays silent while such a guard is active (the message and location go into the
//! error instead: `arrowquant_formats::panics`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use arrowquant_formats::panics::{self, Guard};
use datafusion::common::{DataFusionError, Result};
use futures::FutureExt;

/// Runs `work`; a panic inside it (also one re-raised from a task it awaited) becomes the error
/// "internal error reading WHAT: MESSAGE at FILE:LINE".
pub async fn catch_panics<T>(what: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    let _guard = Guard::enter();
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result.map_err(|e| name_join_panic(what, e)),
        Err(payload) => Err(internal(what, &panics::describe(payload.as_ref()))),
    }
}

fn internal(what: &str, text: &str) -> DataFusionError {
    DataFusionError::Execution(format!("internal error reading {what}: {text}"))
}

/// A task that panicked and was joined as an error (DataFusion's `ExecutionJoin`), said as
/// plainly as a caught panic.
fn name_join_panic(what: &str, error: DataFusionError) -> DataFusionError {
    let root = error.find_root();
    if let DataFusionError::ExecutionJoin(join) = root
        && join.is_panic()
    {
        let text = panics::take_last().unwrap_or_else(|| join.to_string());
        return internal(what, &text);
    }
    error
}

/// Checks that `path` is a Parquet file whose footer the parquet crate can decode, before a
/// query reads it. Errors start with the path, then "not a readable Parquet file".
pub fn check_parquet(path: &Path) -> Result<()> {
    arrowquant_formats::parquet_file::check(path).map_err(|e| DataFusionError::Plan(e.to_string()))
}

/// An error of the Parquet or Arrow decoder (a corrupt page), prefixed with the file it came
/// from; other errors (ours, which name what they are about) pass through.
pub fn name_file(what: &str, error: DataFusionError) -> DataFusionError {
    let decoder = match error.find_root() {
        DataFusionError::ParquetError(_) => true,
        DataFusionError::ArrowError(e, _) => {
            !matches!(**e, datafusion::arrow::error::ArrowError::ExternalError(_))
        }
        _ => false,
    };
    if decoder {
        DataFusionError::Execution(format!(
            "{what}: cannot read: {}",
            crate::cli::error_line(&error)
        ))
    } else {
        error
    }
}
