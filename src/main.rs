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
            Command::Inspect(args) => Some(inspect::run(args).await),
            // The shell handles Ctrl-C itself (it cancels the running query).
            Command::Sql(args) => Some(sql::run(args).await),
            Command::Functions => {
                print!("{}", arrowquant::catalogue::markdown_table());
                Some(Ok(()))
            }
        }
    });
    match result {
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("arrowquant: {}", cli::error_line(&e));
            ExitCode::FAILURE
        }
        None => {
            eprintln!("arrowquant: interrupted; no output was left behind");
            ExitCode::from(130)
        }
    }
}

/// Runs `work` until it ends or Ctrl-C; `None` when interrupted. Dropping the work drops its
/// partial-output guards, which remove what it had written.
async fn interruptible<F: Future>(work: F) -> Option<F::Output> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered before the work starts, so an early Ctrl-C is caught too.
    let Ok(mut interrupt) = signal(SignalKind::interrupt()) else {
        return Some(work.await);
    };
    tokio::select! {
        biased;
        _ = interrupt.recv() => None,
        result = work => Some(result),
    }
}
