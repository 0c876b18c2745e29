//! The model pipeline and the configuration for Python: the same `QuantConfig` resolution
//! (flags > YAML > environment > profile) and the same SQL plans as the `arrowquant` CLI.

use std::path::PathBuf;
use std::sync::LazyLock;

use arrowquant::config::{OutputFormat, QuantConfig, Settings, Value};
use arrowquant::pipeline::gguf_output::is_gguf_path;
use arrowquant::pipeline::{Progress, RunOptions};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

use crate::errors::to_py;

/// One runtime for every call; DataFusion partitions spread over its worker threads.
pub(crate) static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("arrow-quant-v2")
        .build()
        .expect("a tokio runtime")
});

/// A handle on the package's runtime.
pub fn runtime_handle() -> tokio::runtime::Handle {
    RUNTIME.handle().clone()
}

/// Python values as configuration values; anything else is a `TypeError` naming the key.
pub(crate) fn settings_from_dict(
    origin: &str,
    values: Option<&Bound<'_, PyDict>>,
) -> PyResult<Settings> {
    let mut settings = Settings::new(origin);
    let Some(values) = values else {
        return Ok(settings);
    };
    for (key, value) in values.iter() {
        let key: String = key
            .extract()
            .map_err(|_| PyTypeError::new_err("configuration keys must be strings"))?;
        if value.is_none() {
            continue;
        }
        let value = if value.is_instance_of::<PyBool>() {
            Value::Bool(value.extract()?)
        } else if value.is_instance_of::<PyInt>() {
            Value::Int(value.extract()?)
        } else if value.is_instance_of::<PyFloat>() {
            Value::Float(value.extract()?)
        } else if value.is_instance_of::<PyString>() {
            Value::Text(value.extract()?)
        } else if let Ok(path) = value.extract::<PathBuf>() {
            Value::Text(path.display().to_string())
        } else {
            return Err(PyTypeError::new_err(format!(
                "configuration key '{key}': expected a bool, int, float or str, got {}",
                value.get_type().name()?
            )));
        };
        settings.set(&key, value);
    }
    Ok(settings)
}

pub(crate) fn config_error(e: arrowquant::config::ConfigError) -> PyErr {
    match &e {
        arrowquant::config::ConfigError::File { reason, .. } if reason.contains("No such file") => {
            pyo3::exceptions::PyFileNotFoundError::new_err(e.to_string())
        }
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// Resolves a configuration: `settings` (highest priority), then the YAML file, then the
/// `ARROW_QUANT_*` environment, then the profile's defaults. Returns every key as JSON.
#[pyfunction]
#[pyo3(signature = (settings=None, yaml=None))]
fn resolve_config(settings: Option<&Bound<'_, PyDict>>, yaml: Option<PathBuf>) -> PyResult<String> {
    let explicit = settings_from_dict("config", settings)?;
    let yaml = yaml
        .as_deref()
        .map(Settings::from_yaml_file)
        .transpose()
        .map_err(config_error)?;
    let env = Settings::from_process_env().map_err(config_error)?;
    let config = QuantConfig::resolve(&env, yaml.as_ref(), &explicit).map_err(config_error)?;
    Ok(serde_json::to_string(&config).expect("plain data serializes"))
}

/// Cancels a running `quantize` from another thread (the async API's cancellation): the run
/// stops at its next await point and its partial output is removed.
#[pyclass(module = "arrow_quant_v2._native", frozen)]
pub struct CancelToken {
    sender: tokio::sync::watch::Sender<bool>,
}

#[pymethods]
impl CancelToken {
    #[new]
    fn new() -> Self {
        Self {
            sender: tokio::sync::watch::channel(false).0,
        }
    }

    fn cancel(&self) {
        self.sender.send_replace(true);
    }

    #[getter]
    fn cancelled(&self) -> bool {
        *self.sender.borrow()
    }
}

/// Quantizes a model folder or file into `output`; returns the run summary as JSON.
/// The GIL is released while the pipeline runs; `progress(fraction, message)` is called with
/// it held.
#[pyfunction]
#[pyo3(signature = (model, output, settings=None, force=false, progress=None, cancel=None))]
fn quantize(
    py: Python<'_>,
    model: PathBuf,
    output: PathBuf,
    settings: Option<&Bound<'_, PyDict>>,
    force: bool,
    progress: Option<Py<PyAny>>,
    cancel: Option<PyRef<'_, CancelToken>>,
) -> PyResult<String> {
    let mut cancelled = cancel.map(|c| c.sender.subscribe());
    let explicit = settings_from_dict("config", settings)?;
    let env = Settings::from_process_env().map_err(config_error)?;
    let config = QuantConfig::resolve(&env, None, &explicit).map_err(config_error)?;
    if !model.exists() {
        return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
            "{}: no such file or directory",
            model.display()
        )));
    }
    // GGUF output as the command line chooses it: `format="gguf"`, or a GGUF model (which
    // is written as GGUF only).
    let gguf = config.format == OutputFormat::Gguf;
    if is_gguf_path(&model) && !gguf {
        return Err(PyValueError::new_err(format!(
            "{}: a GGUF model is written as GGUF: pass format=\"gguf\" and an output ending in .gguf",
            model.display()
        )));
    }
    if let (Some(key), false) = (config.gguf_only_key(), gguf) {
        return Err(PyValueError::new_err(format!(
            "{key}: applies to GGUF output only (format=\"gguf\")"
        )));
    }
    if let Some(recipe) = &config.recipe {
        arrowquant::pipeline::recipes::Recipe::parse(recipe)
            .map_err(|e| PyValueError::new_err(format!("recipe: {e}")))?;
    }
    let options = RunOptions {
        model,
        output,
        config,
        force,
    };
    // The first exception a callback raises (a KeyboardInterrupt from a notebook among them)
    // stops the run, whose partial output is then removed, and is raised again to the caller.
    let callback_error: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
    let callback_failed = tokio::sync::Notify::new();
    let summary = py.detach(|| {
        let state = std::sync::Mutex::new((String::new(), 0u64, 0u64));
        let report = |p: Progress| {
            let Some(callback) = &progress else { return };
            if callback_error.lock().expect("callback error").is_some() {
                return;
            }
            let mut state = state.lock().expect("progress state");
            match p {
                Progress::Start { phase, bytes } => *state = (phase, bytes, 0),
                Progress::Advance { bytes } => state.2 += bytes,
            }
            let fraction = if state.1 == 0 {
                0.0
            } else {
                (state.2 as f64 / state.1 as f64).min(1.0)
            };
            let message = state.0.clone();
            drop(state);
            Python::attach(|py| {
                if let Err(e) = callback.call1(py, (fraction, message)) {
                    *callback_error.lock().expect("callback error") = Some(e);
                    callback_failed.notify_one();
                }
            });
        };
        RUNTIME.block_on(async {
            let cancel = async {
                match cancelled.as_mut() {
                    Some(receiver) => {
                        let _ = receiver.wait_for(|c| *c).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = cancel => Err(datafusion::common::DataFusionError::Execution(
                    "cancelled".to_string(),
                )),
                _ = callback_failed.notified() => Err(datafusion::common::DataFusionError::Execution(
                    "the progress callback raised an exception".to_string(),
                )),
                // The CLI's and the server's dispatch (Parquet or GGUF by the config's
                // format), with their guard against panics while the inputs are read.
                result = arrowquant::pipeline::quantize(&options, &report) => result,
            }
        })
    });
    if let Some(e) = callback_error.into_inner().expect("callback error") {
        return Err(e);
    }
    let summary = summary.map_err(to_py)?;
    if let Some(callback) = &progress {
        callback.call1(py, (1.0, "done"))?;
    }
    Ok(serde_json::to_string(&summary).expect("plain data serializes"))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CancelToken>()?;
    m.add_function(wrap_pyfunction!(resolve_config, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    Ok(())
}
