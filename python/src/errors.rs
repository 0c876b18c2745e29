//! Errors as Python exceptions: bad arguments are `ValueError`, missing files
//! `FileNotFoundError`, everything else the package's `QuantizationError`.

use datafusion::common::DataFusionError;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    arrow_quant_v2,
    QuantizationError,
    PyException,
    "A quantization run failed (bad model data, an I/O error, a failed query)."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("QuantizationError", m.py().get_type::<QuantizationError>())
}

/// The innermost message of a DataFusion error, as the CLI prints it.
fn message(error: &DataFusionError) -> String {
    error.find_root().to_string()
}

/// Maps an engine error to the Python exception a user expects.
pub fn to_py(error: DataFusionError) -> PyErr {
    let text = message(&error);
    let root = error.find_root();
    if let DataFusionError::IoError(e) = root
        && e.kind() == std::io::ErrorKind::NotFound
    {
        return PyFileNotFoundError::new_err(text);
    }
    if text.contains("no such file") || text.contains("No such file") || text.contains("not found:")
    {
        return PyFileNotFoundError::new_err(text);
    }
    match root {
        DataFusionError::Plan(_) | DataFusionError::Configuration(_) => PyValueError::new_err(text),
        _ => QuantizationError::new_err(text),
    }
}
