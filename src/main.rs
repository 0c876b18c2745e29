//! The `arrowquant` command line.

use std::process::ExitCode;

use arrowquant::cli::{self, dequantize, inspect, quantize, sql};
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
    /// A SQL shell with every ArrowQuant function registered.
    Sql(sql::SqlArgs),
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
            Command::Inspect(args) => Ok(inspect::run(args).await),
            // The shell handles Ctrl-C itself (it cancels the running query).
            Command::Sql(args) => Ok(sql::run(args).await),
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
            eprintln!(
                "arrowquant: interrupted by {}; no output was left behind",
                stop.name
            );
            // The shell's convention for a process ended by a signal.
            ExitCode::from(128 + stop.number)
        }
    }
}

/// The signal that stopped a run.
struct Stop {
    name: &'static str,
    number: u8,
}

/// Runs `work` until it ends or a signal asks the process to stop: SIGINT (Ctrl-C), SIGTERM
/// (`kill`, service managers, container stops) or SIGHUP (the terminal closed). Dropping the
/// work drops its partial-output guards, which remove what it had written.
async fn interruptible<F: Future>(work: F) -> Result<F::Output, Stop> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered before the work starts, so an early signal is caught too.
    let (Ok(mut interrupt), Ok(mut terminate), Ok(mut hangup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return Ok(work.await);
    };
    let stop = |name, kind: SignalKind| Stop {
        name,
        number: u8::try_from(kind.as_raw_value()).unwrap_or(0),
    };
    tokio::select! {
        biased;
        _ = interrupt.recv() => Err(stop("SIGINT", SignalKind::interrupt())),
        _ = terminate.recv() => Err(stop("SIGTERM", SignalKind::terminate())),
        _ = hangup.recv() => Err(stop("SIGHUP", SignalKind::hangup())),
        result = work => Ok(result),
    }
}
