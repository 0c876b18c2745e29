//! The `arrowquant` subcommands.

pub mod dequantize;
pub mod export;
pub mod inspect;
pub mod quantize;
pub mod sql;

use std::path::PathBuf;

use datafusion::common::DataFusionError;

/// The bundled example model (`examples/models/tiny-unet`), quantized when no model is named.
pub fn bundled_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/models/tiny-unet")
}

/// One line for an error: the innermost message without DataFusion's category prefixes.
pub fn error_line(error: &DataFusionError) -> String {
    let root = error.find_root();
    let text = match root {
        DataFusionError::External(e) => e.to_string(),
        DataFusionError::Plan(s) | DataFusionError::Execution(s) => s.clone(),
        DataFusionError::IoError(e) => e.to_string(),
        // A task that panicked, joined as an error: say so plainly.
        DataFusionError::ExecutionJoin(e) => format!("internal error: {e}"),
        other => other.strip_backtrace(),
    };
    text.lines()
        .next()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_string()
}
