//! The runtime that does the server's heavy work — jobs, and the execution of queries — apart
//! from the one that answers requests.
//!
//! Quantizing is CPU-bound for seconds at a time between awaits; on the listeners' runtime it
//! held every worker, and `/healthz` or a job's status waited behind it (up to 8.6 s measured
//! in the dev build with one job running; benches/serve_load.py). Here the operating system
//! shares the cores between the two runtimes' threads, so requests are answered while work
//! runs.

use std::sync::LazyLock;

static COMPUTE: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("arrowquant-compute")
        .enable_all()
        .build()
        .expect("a tokio runtime for the server's work")
});

/// The compute runtime, made on first use and kept for the life of the process.
pub fn handle() -> tokio::runtime::Handle {
    COMPUTE.handle().clone()
}

/// A task on the compute runtime that is aborted when this is dropped: a query whose client
/// went away, or past its deadline, stops at its next await instead of running on.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
