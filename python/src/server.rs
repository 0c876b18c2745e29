//! `python -m arrow_quant_v2.server`: the `arrowquant serve` server, run from Python.

use arrowquant::serve::ServeArgs;
use clap::Parser;
use pyo3::exceptions::PySystemExit;
use pyo3::prelude::*;

/// The server's command line, as `python -m arrow_quant_v2.server` takes it.
#[derive(Debug, Parser)]
#[command(
    name = "python -m arrow_quant_v2.server",
    version,
    about = "Serve every ArrowQuant function over Arrow Flight SQL, and whole-model jobs over HTTP"
)]
struct ServerCommand {
    #[command(flatten)]
    args: ServeArgs,
}

/// Runs the server with `argv` (the flags of `arrowquant serve`, program name excluded) until
/// SIGTERM or SIGINT, with the GIL released. Bad flags print clap's message and raise
/// SystemExit with its code; an error while starting prints one line and raises SystemExit(1).
#[pyfunction]
fn serve(py: Python<'_>, argv: Vec<String>) -> PyResult<()> {
    let program = "python -m arrow_quant_v2.server".to_string();
    let command = match ServerCommand::try_parse_from(std::iter::once(program).chain(argv)) {
        Ok(command) => command,
        Err(e) => {
            let _ = e.print();
            return Err(PySystemExit::new_err(e.exit_code()));
        }
    };
    let result =
        py.detach(|| crate::pipeline::RUNTIME.block_on(arrowquant::serve::run(command.args)));
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("arrowquant serve: {}", arrowquant::cli::error_line(&e));
            Err(PySystemExit::new_err(1))
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    Ok(())
}
