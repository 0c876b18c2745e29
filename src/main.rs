//! The `arrowquant` command line.

use std::process::ExitCode;

use arrowquant::shell::{self, SqlArgs};
use clap::{Parser, Subcommand};

/// Model-weight quantization as SQL, on Apache DataFusion.
#[derive(Debug, Parser)]
#[command(name = "arrowquant", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A SQL shell with every ArrowQuant function registered.
    Sql(SqlArgs),
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
            Command::Sql(args) => shell::run(args).await,
            Command::Functions => {
                print!("{}", arrowquant::catalogue::markdown_table());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arrowquant: {}", e.strip_backtrace());
            ExitCode::FAILURE
        }
    }
}
