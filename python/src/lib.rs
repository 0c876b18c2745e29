//! `arrow_quant_v2._native`: the Rust side of the Python package.
//!
//! - [`functions`]: every ArrowQuant SQL function as an object carrying a `datafusion-ffi`
//!   PyCapsule, so an ordinary `datafusion.SessionContext` from PyPI can register it.
//! - [`pipeline`]: the model pipeline and the configuration, run with the GIL released.
//! - [`server`]: `arrowquant serve`, for `python -m arrow_quant_v2.server`.

use pyo3::prelude::*;

mod batch;
mod errors;
mod functions;
mod pipeline;
mod server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DATAFUSION_VERSION", datafusion::DATAFUSION_VERSION)?;
    errors::register(m)?;
    functions::register(m)?;
    batch::register(m)?;
    pipeline::register(m)?;
    server::register(m)?;
    Ok(())
}
