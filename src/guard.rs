//! Defences against input that makes a dependency panic.
//!
//! The parquet crate panics on some corrupt files instead of returning an error (an
//! out-of-range slice in its footer or page decoding). What can be checked up front is checked
//! by [`check_parquet`]: the magic bytes, the footer length against the file size, and the
//! metadata decoded by the crate's own reader. Corruption inside the data pages only shows
//! while a query runs, so [`catch_panics`] turns a panic anywhere in a command's reading into an
//! error that names what was being read; the panic hook stays silent while such a guard is
//! active (the message and location go into the error instead).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use datafusion::common::{DataFusionError, Result};
use datafusion::parquet::file::metadata::ParquetMetaDataReader;
use futures::FutureExt;

/// Guards running now: while any is, a panic is recorded, not printed.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// The last recorded panic: message and `file:line`.
static LAST: Mutex<Option<String>> = Mutex::new(None);
static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if ACTIVE.load(Ordering::SeqCst) == 0 {
                return previous(info);
            }
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", short_path(l.file()), l.line()))
                .unwrap_or_default();
            let text = format!("{}{at}", payload_text(info.payload()));
            if let Ok(mut last) = LAST.lock() {
                *last = Some(text);
            }
        }));
    });
}

/// A registry path without the machine-specific prefix: `parquet-59.3.2/src/...`.
fn short_path(file: &str) -> &str {
    match file.find("/registry/src/") {
        Some(i) => {
            let rest = &file[i + "/registry/src/".len()..];
            rest.split_once('/').map_or(rest, |(_, tail)| tail)
        }
        None => file,
    }
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

struct Active;

impl Active {
    fn enter() -> Self {
        install_hook();
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The text of the last recorded panic (message and location), or the payload's message.
fn describe(payload: &(dyn Any + Send)) -> String {
    LAST.lock()
        .ok()
        .and_then(|mut last| last.take())
        .unwrap_or_else(|| payload_text(payload))
}

/// Runs `work`; a panic inside it (also one re-raised from a task it awaited) becomes the error
/// "internal error reading WHAT: MESSAGE at FILE:LINE".
pub async fn catch_panics<T>(what: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    let _active = Active::enter();
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result.map_err(|e| name_join_panic(what, e)),
        Err(payload) => Err(internal(what, &describe(payload.as_ref()))),
    }
}

/// The same for synchronous work.
pub fn catch_panics_sync<T>(what: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let _active = Active::enter();
    match std::panic::catch_unwind(AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(payload) => Err(internal(what, &describe(payload.as_ref()))),
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
        let text = LAST
            .lock()
            .ok()
            .and_then(|mut last| last.take())
            .unwrap_or_else(|| join.to_string());
        return internal(what, &text);
    }
    error
}

/// Checks that `path` is a Parquet file whose footer the parquet crate can decode, before a
/// query reads it: the magic at both ends, a footer length that fits the file, and the metadata
/// decoded (with any panic of the decoder caught). Errors start with the path, then "not a
/// readable Parquet file".
pub fn check_parquet(path: &Path) -> Result<()> {
    let bad = |reason: String| DataFusionError::Plan(format!("{}: {reason}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    if meta.is_dir() {
        return Err(bad("not a readable Parquet file: a directory".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let size = meta.len();
    // "PAR1", the data, the footer, its 4-byte length and "PAR1".
    if size < 12 {
        return Err(bad(format!(
            "not a readable Parquet file: {size} bytes is too short for the 12 bytes of magic and footer length"
        )));
    }
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 4];
    let mut tail = [0u8; 8];
    file.read_exact_at(&mut head, 0)
        .and_then(|_| file.read_exact_at(&mut tail, size - 8))
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if &head != b"PAR1" || &tail[4..] != b"PAR1" {
        return Err(bad(
            "not a readable Parquet file: no PAR1 magic at both ends".into(),
        ));
    }
    let footer = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")));
    if footer == 0 || footer > size - 12 {
        return Err(bad(format!(
            "not a readable Parquet file: footer length {footer} does not fit in the file ({size} bytes)"
        )));
    }
    let what = path.display().to_string();
    catch_panics_sync(&what, || {
        ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .map(|_| ())
            .map_err(|e| bad(format!("not a readable Parquet file: corrupt footer: {e}")))
    })
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
