//! The `arrowquant` command line.

use std::process::ExitCode;

use arrowquant::cli::{self, dequantize, export, inspect, quantize, sql};
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Model-weight quantization as SQL, on Apache DataFusion.
#[derive(Debug, Parser)]
#[command(name = "arrowquant", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Quantize a whole model into weights.parquet, report.parquet and manifest.json.
    Quantize(Box<quantize::QuantizeArgs>),
    /// List a model's tensors with dtype, shape, bytes and statistics.
    Inspect(inspect::InspectArgs),
    /// Rebuild a quantized model as a safetensors file.
    Dequantize(dequantize::DequantizeArgs),
    /// Write a quantized output directory (GGUF schemes) as one GGUF file.
    Export(export::ExportArgs),
    /// A SQL shell with every ArrowQuant function registered.
    Sql(sql::SqlArgs),
    /// Serve every function over Arrow Flight SQL, and whole-model jobs over HTTP.
    Serve(Box<arrowquant::serve::ServeArgs>),
    /// Print the function catalogue as a Markdown table.
    Functions,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("arrowquant: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Quantize(args) => interruptible(quantize::run(*args)).await,
            Command::Dequantize(args) => interruptible(dequantize::run(args)).await,
            Command::Export(args) => interruptible(export::run(args)).await,
            Command::Inspect(args) => Ok(inspect::run(args).await),
            // The shell handles Ctrl-C itself (it cancels the running query).
            Command::Sql(args) => Ok(sql::run(args).await),
            // The server handles SIGTERM and SIGINT itself (it stops gracefully).
            Command::Serve(args) => Ok(arrowquant::serve::run(*args).await),
            Command::Functions => {
                print!("{}", arrowquant::catalogue::markdown_table());
                Ok(Ok(()))
            }
        }
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("arrowquant: {}", cli::error_line(&e));
            ExitCode::FAILURE
        }
        Err(stop) => {
            stop.report();
            ExitCode::from(stop.exit_code())
        }
    }
}

/// The signal that stopped a run.
struct Stop {
    name: &'static str,
    number: u8,
}

impl Stop {
    /// The shell's convention for a process ended by a signal.
    fn exit_code(&self) -> u8 {
        128 + self.number
    }

    /// Says so once, whether the run or the watchdog gets there first.
    fn report(&self) {
        static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !REPORTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!(
                "arrowquant: interrupted by {}; no output was left behind",
                self.name
            );
        }
    }
}

/// How long a stopped run has to drop its work (and with it its partial output) before the
/// process removes the partials itself and exits: the work answers at its next await, which
/// blocking code (a slow disk, a wedged network file system) can delay indefinitely.
const GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The signals that ask the process to stop: SIGINT (Ctrl-C), SIGTERM (`kill`, service managers,
/// container stops) and SIGHUP (the terminal closed).
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Stop {
        let stop = |name, number| Stop { name, number };
        tokio::select! {
            _ = self.interrupt.recv() => stop("SIGINT", 2),
            _ = self.terminate.recv() => stop("SIGTERM", 15),
            _ = self.hangup.recv() => stop("SIGHUP", 1),
        }
    }
}

/// Runs `work` until it ends or a stop signal arrives. Dropping the work drops its
/// partial-output guards, which remove what it had written; should the work not be dropped
/// within [`GRACE`], a watchdog removes the partials and exits.
async fn interruptible<F: Future>(work: F) -> Result<F::Output, Stop> {
    // Registered before the work starts, so an early signal is caught too.
    let Ok(mut signals) = Signals::new() else {
        return Ok(work.await);
    };
    // Every listener hears every signal; this one runs on the runtime's workers, not on this
    // thread, which the work may be blocking.
    if let Ok(mut watchdog) = Signals::new() {
        tokio::spawn(async move {
            let stop = watchdog.next().await;
            std::thread::spawn(move || {
                std::thread::sleep(GRACE);
                stop.report();
                arrowquant::pipeline::output::exit_removing_partials(i32::from(stop.exit_code()))
            });
        });
    }
    tokio::select! {
        biased;
        stop = signals.next() => Err(stop),
        result = work => Ok(result),
    }
}
