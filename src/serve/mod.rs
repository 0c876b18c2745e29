//! `arrowquant serve`: the SQL engine with every ArrowQuant function over Arrow Flight SQL, and
//! an HTTP API for whole-model jobs with Prometheus metrics.
//!
//! One tokio runtime carries both listeners. Every client shares one session (so a table one
//! client creates, another sees), confined to `--root` ([`crate::root`]), with a memory pool of
//! `--memory-limit`; each query is bounded by `--query-timeout` and at most
//! `--max-concurrent-queries` run at once. SIGTERM or SIGINT stops the listeners, cancels the
//! running jobs (their partial outputs removed) and exits 0.

pub mod auth;
pub mod compute;
pub mod flight;
mod handles;
pub mod http;
pub mod jobs;
pub mod metrics;
mod query_stream;
pub mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use datafusion::common::{DataFusionError, Result};
use datafusion::prelude::SessionContext;

use crate::root::Root;
use auth::Token;
use metrics::Metrics;

/// `arrowquant serve`'s flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the Arrow Flight SQL endpoint (port 0: any free port, printed on start).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    pub flight: SocketAddr,
    /// Address of the HTTP API (jobs, /metrics, /healthz, /readyz, /openapi.json).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    pub http: SocketAddr,
    /// The only directory clients may name paths in (relative paths start there)
    /// [default: the working directory].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// A file holding the bearer token every call but the health checks must carry; without
    /// one the server listens on loopback addresses only.
    #[arg(long, value_name = "F")]
    pub auth_token_file: Option<PathBuf>,
    /// Jobs that run at once; the rest wait in the queue.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_jobs: u32,
    /// SQL queries that run at once; the rest wait (within their time limit).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_concurrent_queries: u32,
    /// Memory the SQL engine's operators may hold (DataFusion's memory pool), e.g. 4GiB.
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = parse_size_arg)]
    pub memory_limit: u64,
    /// Seconds a query may take, planning and streaming included.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    pub query_timeout: f64,
    /// The largest request a client may send (a Flight message, an HTTP body).
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size_arg)]
    pub max_request_size: u64,
}

fn parse_size_arg(text: &str) -> std::result::Result<u64, String> {
    crate::config::parse_size(text)
}

/// What every handler shares.
pub struct ServerState {
    pub root: Arc<Root>,
    pub token: Option<Token>,
    pub metrics: Arc<Metrics>,
    /// The one session every SQL client uses.
    pub ctx: SessionContext,
    /// Permits for running queries (`--max-concurrent-queries`).
    pub queries: Arc<tokio::sync::Semaphore>,
    pub query_timeout: Duration,
    pub max_request_bytes: usize,
    pub jobs: Arc<jobs::Jobs>,
}

impl ServerState {
    /// The state for `args`: the token read, the root checked, the session made.
    pub fn new(args: &ServeArgs) -> Result<Arc<ServerState>> {
        let token = args
            .auth_token_file
            .as_deref()
            .map(Token::load)
            .transpose()?;
        if token.is_none() {
            for (flag, addr) in [("--flight", args.flight), ("--http", args.http)] {
                if !addr.ip().is_loopback() {
                    return Err(DataFusionError::Plan(format!(
                        "{flag} {addr}: without --auth-token-file the server listens on \
                         loopback addresses only (127.0.0.1, ::1)"
                    )));
                }
            }
        }
        if !(args.query_timeout > 0.0 && args.query_timeout.is_finite()) {
            return Err(DataFusionError::Plan(format!(
                "--query-timeout {}: give a positive number of seconds",
                args.query_timeout
            )));
        }
        let root_dir = match &args.root {
            Some(dir) => dir.clone(),
            None => std::env::current_dir().map_err(|e| {
                DataFusionError::Plan(format!("the working directory (the default root): {e}"))
            })?,
        };
        let root = Arc::new(Root::new(&root_dir)?);
        let metrics = Arc::new(Metrics::new());
        let memory = usize::try_from(args.memory_limit).unwrap_or(usize::MAX);
        let ctx = session::context(&root, memory)?;
        let jobs = jobs::Jobs::new(args.max_jobs as usize, metrics.clone(), root.clone());
        Ok(Arc::new(ServerState {
            root,
            token,
            metrics,
            ctx,
            queries: Arc::new(tokio::sync::Semaphore::new(
                args.max_concurrent_queries as usize,
            )),
            query_timeout: Duration::from_secs_f64(args.query_timeout),
            max_request_bytes: usize::try_from(args.max_request_size).unwrap_or(usize::MAX),
            jobs,
        }))
    }
}

/// How long the listeners have to finish their requests after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> Result<()> {
    // Listening for the stop signals before anything is announced: a supervisor may send one
    // as soon as it reads the address line.
    let stop_signal = StopSignal::new()?;
    let state = ServerState::new(&args)?;
    // Relative paths in DataFusion's own statements (COPY TO, LOCATION) are taken from the
    // working directory: make that the root, so they mean what the table functions' do.
    std::env::set_current_dir(state.root.dir()).map_err(|e| {
        DataFusionError::Plan(format!("--root {}: {e}", state.root.dir().display()))
    })?;
    let bind = |flag: &str, addr: SocketAddr| {
        std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| DataFusionError::Plan(format!("{flag} {addr}: {e}")))
    };
    let flight_listener = bind("--flight", args.flight)?;
    let http_listener = bind("--http", args.http)?;
    let flight_addr = flight_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    say(&format!(
        "Flight SQL on grpc://{flight_addr}, HTTP on http://{http_addr}, root {}",
        state.root.dir().display()
    ));
    if state.token.is_none() {
        say("no --auth-token-file: listening on loopback only");
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let flight = tokio::spawn(flight::serve(
        state.clone(),
        flight_listener,
        stopped(stop_rx.clone()),
    ));
    let http = tokio::spawn(http::serve(
        state.clone(),
        http_listener,
        stopped(stop_rx.clone()),
    ));

    let signal = stop_signal.next().await;
    say(&format!("{signal}: stopping"));
    // Jobs first, the listeners still open: /readyz answers 503 while the jobs drain, so a
    // load balancer stops sending work before the port closes.
    state.jobs.shutdown().await;
    let _ = stop_tx.send(true);
    for (name, task) in [("Flight SQL", flight), ("HTTP", http)] {
        match tokio::time::timeout(SHUTDOWN_GRACE, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("arrowquant serve: {name}: {e}"),
            Ok(Err(e)) => eprintln!("arrowquant serve: {name}: {e}"),
            Err(_) => eprintln!("arrowquant serve: {name}: requests still open after the grace"),
        }
    }
    say("stopped");
    Ok(())
}

/// One line on standard output. A server whose output was closed (its supervisor gone, a pipe
/// nobody reads) goes on serving: the line is dropped, where `println!` would panic.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "arrowquant serve: {line}").and_then(|()| out.flush());
}

/// SIGTERM (service managers, container stops, Kubernetes) and SIGINT (Ctrl-C).
struct StopSignal {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn new() -> Result<StopSignal> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignal {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
