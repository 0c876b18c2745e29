//! `quantize_batch`: a table of layers in (any Arrow stream: pyarrow, polars, ... through the
//! Arrow PyCapsule interface, without a copy), the `arrow_quant_v2` output table out — one call, the GIL
//! released, layers spread over DataFusion partitions.

use arrowquant::config::{QuantConfig, Settings};
use arrowquant::pipeline::batch::{
    check_schema, output_schema, quantize_batch as quantize_batch_engine,
};
use datafusion::arrow::array::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ffi_stream::{ArrowArrayStreamReader, FFI_ArrowArrayStream};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict};

use crate::errors::to_py;
use crate::pipeline::{RUNTIME, config_error, settings_from_dict};

/// A finished table, handed to Python through `__arrow_c_stream__` (pyarrow, polars, ...).
#[pyclass(module = "arrow_quant_v2._native")]
pub struct ArrowStream {
    batches: Option<Vec<RecordBatch>>,
}

#[pymethods]
impl ArrowStream {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &mut self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema; // The schema is fixed; consumers cast if they must.
        let batches = self
            .batches
            .take()
            .ok_or_else(|| PyValueError::new_err("this result stream was already consumed"))?;
        let reader: Box<dyn RecordBatchReader + Send> = Box::new(RecordBatchIterator::new(
            batches.into_iter().map(Ok),
            output_schema(),
        ));
        PyCapsule::new_with_value(py, FFI_ArrowArrayStream::new(reader), c"arrow_array_stream")
    }
}

/// Takes the stream out of an object's `__arrow_c_stream__` capsule (the Arrow PyCapsule
/// interface: the producer's buffers are not copied).
fn import_stream(data: &Bound<'_, PyAny>) -> PyResult<ArrowArrayStreamReader> {
    if !data.hasattr("__arrow_c_stream__")? {
        return Err(PyTypeError::new_err(format!(
            "quantize_batch_arrow expects an Arrow table or stream (an object with \
             __arrow_c_stream__: pyarrow.Table, RecordBatchReader, polars.DataFrame, ...), got {}",
            data.get_type().name()?
        )));
    }
    let capsule = data.call_method0("__arrow_c_stream__")?;
    let capsule = capsule.cast::<PyCapsule>()?;
    let pointer = capsule
        .pointer_checked(Some(c"arrow_array_stream"))?
        .cast::<FFI_ArrowArrayStream>();
    // Moves the stream out of the capsule and leaves a released one behind, as the protocol asks.
    // SAFETY: the capsule is named "arrow_array_stream", so by the Arrow PyCapsule protocol its
    // pointer is a valid FFI_ArrowArrayStream that the consumer may move out.
    unsafe { ArrowArrayStreamReader::from_raw(pointer.as_ptr()) }
        .map_err(|e| PyValueError::new_err(format!("not a readable Arrow stream: {e}")))
}

/// The configuration (settings > ARROW_QUANT_* > profile), the input stream and its checked
/// schema (whether it has a `shape` column), before the GIL is released.
fn prepare(
    data: &Bound<'_, PyAny>,
    settings: Option<&Bound<'_, PyDict>>,
) -> PyResult<(QuantConfig, ArrowArrayStreamReader, SchemaRef, bool)> {
    let explicit = settings_from_dict("config", settings)?;
    let env = Settings::from_process_env().map_err(config_error)?;
    let config = QuantConfig::resolve(&env, None, &explicit).map_err(config_error)?;
    let reader = import_stream(data)?;
    let schema = reader.schema();
    let has_shape = check_schema(&schema).map_err(PyValueError::new_err)?;
    Ok((config, reader, schema, has_shape))
}

/// Quantizes every layer of an Arrow table in one call; see `ArrowQuantV2.quantize_batch_arrow`.
#[pyfunction]
#[pyo3(signature = (data, settings=None))]
fn quantize_batch(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    settings: Option<&Bound<'_, PyDict>>,
) -> PyResult<ArrowStream> {
    let (config, reader, schema, has_shape) = prepare(data, settings)?;
    let batches = py.detach(|| {
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        RUNTIME.block_on(quantize_batch_engine(batches, schema, has_shape, &config))
    });
    Ok(ArrowStream {
        batches: Some(batches.map_err(to_py)?),
    })
}

/// For benches/python_batch.py: the same work as `quantize_batch` driven from Rust — the table
/// imported once, then the engine run `runs` times without crossing the boundary; returns each
/// run's seconds.
#[pyfunction]
#[pyo3(signature = (data, settings=None, runs=5))]
fn bench_engine(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    settings: Option<&Bound<'_, PyDict>>,
    runs: usize,
) -> PyResult<Vec<f64>> {
    let (config, reader, schema, has_shape) = prepare(data, settings)?;
    let times = py.detach(|| {
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = std::time::Instant::now();
            let out = RUNTIME.block_on(quantize_batch_engine(
                batches.clone(),
                schema.clone(),
                has_shape,
                &config,
            ))?;
            std::hint::black_box(out);
            times.push(started.elapsed().as_secs_f64());
        }
        Ok::<_, datafusion::common::DataFusionError>(times)
    });
    times.map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ArrowStream>()?;
    m.add_function(wrap_pyfunction!(quantize_batch, m)?)?;
    m.add_function(wrap_pyfunction!(bench_engine, m)?)?;
    Ok(())
}
