//! Every SQL function as a Python object exposing the `datafusion-ffi` capsule protocol that
//! `datafusion.udf`, `udaf`, `udwf` and `udtf` accept (`__datafusion_scalar_udf__` and so on).

use std::ptr::NonNull;
use std::sync::Arc;

use arrowquant_udfs::udfs;
use datafusion::catalog::TableFunctionImpl;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};
use datafusion_ffi::proto::logical_extension_codec::FFI_LogicalExtensionCodec;
use datafusion_ffi::udaf::FFI_AggregateUDF;
use datafusion_ffi::udf::FFI_ScalarUDF;
use datafusion_ffi::udtf::FFI_TableFunction;
use datafusion_ffi::udwf::FFI_WindowUDF;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

/// A scalar function: pass it to `datafusion.udf(...)`.
#[pyclass(module = "arrow_quant_v2._native", frozen)]
pub struct ScalarFunction {
    inner: Arc<ScalarUDF>,
}

#[pymethods]
impl ScalarFunction {
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn __datafusion_scalar_udf__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        let udf = FFI_ScalarUDF::from(Arc::clone(&self.inner));
        PyCapsule::new_with_value(py, udf, c"datafusion_scalar_udf")
    }

    fn __repr__(&self) -> String {
        format!("ScalarFunction({})", self.inner.name())
    }
}

/// An aggregate function: pass it to `datafusion.udaf(...)`.
#[pyclass(module = "arrow_quant_v2._native", frozen)]
pub struct AggregateFunction {
    inner: Arc<AggregateUDF>,
}

#[pymethods]
impl AggregateFunction {
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn __datafusion_aggregate_udf__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let udaf = FFI_AggregateUDF::from(Arc::clone(&self.inner));
        PyCapsule::new_with_value(py, udaf, c"datafusion_aggregate_udf")
    }

    fn __repr__(&self) -> String {
        format!("AggregateFunction({})", self.inner.name())
    }
}

/// A window function: pass it to `datafusion.udwf(...)`.
#[pyclass(module = "arrow_quant_v2._native", frozen)]
pub struct WindowFunction {
    inner: Arc<WindowUDF>,
}

#[pymethods]
impl WindowFunction {
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn __datafusion_window_udf__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        let udwf = FFI_WindowUDF::from(Arc::clone(&self.inner));
        PyCapsule::new_with_value(py, udwf, c"datafusion_window_udf")
    }

    fn __repr__(&self) -> String {
        format!("WindowFunction({})", self.inner.name())
    }
}

/// A table function: pass it to `datafusion.udtf(function, function.name)`.
#[pyclass(module = "arrow_quant_v2._native", frozen)]
pub struct TableFunction {
    name: &'static str,
    inner: Arc<dyn TableFunctionImpl>,
}

/// The session's logical codec: the capsule itself, or an object that gives one.
fn logical_codec(session: &Bound<'_, PyAny>) -> PyResult<FFI_LogicalExtensionCodec> {
    let attr = "__datafusion_logical_extension_codec__";
    let capsule = if session.hasattr(attr)? {
        session.getattr(attr)?.call0()?
    } else {
        session.clone()
    };
    let capsule = capsule.cast::<PyCapsule>()?;
    let pointer: NonNull<FFI_LogicalExtensionCodec> = capsule
        .pointer_checked(Some(c"datafusion_logical_extension_codec"))?
        .cast();
    // The capsule owns the codec; we keep a clone of it (the FFI struct's own clone).
    // SAFETY: `pointer_checked` returned the capsule's non-null pointer under the codec's
    // name, so it points to the FFI codec the capsule owns, alive while `capsule` is borrowed.
    Ok(unsafe { pointer.as_ref() }.clone())
}

#[pymethods]
impl TableFunction {
    #[getter]
    fn name(&self) -> &str {
        self.name
    }

    fn __datafusion_table_function__<'py>(
        &self,
        py: Python<'py>,
        session: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let codec = logical_codec(&session)?;
        // A runtime handle, never None: datafusion-ffi 55's caller side reads this field of
        // our private data directly (`FFI_TableFunction::runtime`), and a `None` there was read
        // as a garbage handle by the PyPI wheel (segfaults once several sessions existed).
        let runtime = Some(crate::pipeline::runtime_handle());
        let function =
            FFI_TableFunction::new_with_ffi_codec(Arc::clone(&self.inner), runtime, codec);
        PyCapsule::new_with_value(py, function, c"datafusion_table_function")
    }

    fn __repr__(&self) -> String {
        format!("TableFunction({})", self.name)
    }
}

#[pyfunction]
fn scalar_functions() -> Vec<ScalarFunction> {
    udfs::scalar_udfs()
        .into_iter()
        .map(|inner| ScalarFunction { inner })
        .collect()
}

#[pyfunction]
fn aggregate_functions() -> Vec<AggregateFunction> {
    udfs::aggregate_udfs()
        .into_iter()
        .map(|inner| AggregateFunction { inner })
        .collect()
}

#[pyfunction]
fn window_functions() -> Vec<WindowFunction> {
    udfs::window_udfs()
        .into_iter()
        .map(|inner| WindowFunction { inner })
        .collect()
}

#[pyfunction]
fn table_functions() -> Vec<TableFunction> {
    arrowquant::tables::table_functions()
        .into_iter()
        .map(|t| TableFunction {
            name: t.name,
            inner: t.function,
        })
        .collect()
}

/// The function catalogue as a Markdown table (the README's).
#[pyfunction]
fn catalogue() -> String {
    arrowquant::catalogue::markdown_table()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ScalarFunction>()?;
    m.add_class::<AggregateFunction>()?;
    m.add_class::<WindowFunction>()?;
    m.add_class::<TableFunction>()?;
    m.add_function(wrap_pyfunction!(scalar_functions, m)?)?;
    m.add_function(wrap_pyfunction!(aggregate_functions, m)?)?;
    m.add_function(wrap_pyfunction!(window_functions, m)?)?;
    m.add_function(wrap_pyfunction!(table_functions, m)?)?;
    m.add_function(wrap_pyfunction!(catalogue, m)?)?;
    Ok(())
}
