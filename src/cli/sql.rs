//! `arrowquant sql`: a SQL shell with every function registered, built on `datafusion-cli`
//! (line editing, history, completion and output formats come from there).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use datafusion::common::{DataFusionError, Result};
use datafusion_cli::exec;
use datafusion_cli::object_storage::instrumented::InstrumentedObjectStoreRegistry;
use datafusion_cli::print_format::PrintFormat;
use datafusion_cli::print_options::{MaxRows, PrintOptions};

use crate::guard::catch_panics;
use crate::session;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

impl From<Format> for PrintFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Table => PrintFormat::Table,
            Format::Csv => PrintFormat::Csv,
            Format::Json => PrintFormat::Json,
        }
    }
}

/// Run SQL with every ArrowQuant function registered: interactively (with history), from
/// `-c`, or from files. Parquet files can be queried by path or through
/// `CREATE EXTERNAL TABLE ... STORED AS PARQUET LOCATION '...'`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Run this SQL and exit (may be given several times).
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    pub commands: Vec<String>,

    /// Run the SQL in this file and exit (may be given several times).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Print only results: no timing lines.
    #[arg(short, long)]
    pub quiet: bool,

    /// Largest number of rows printed per result (0: all).
    #[arg(long, default_value_t = 0)]
    pub maxrows: usize,
}

pub async fn run(args: SqlArgs) -> Result<()> {
    let registry = Arc::new(InstrumentedObjectStoreRegistry::new());
    let ctx = session::shell_context(Arc::clone(&registry)).await?;
    let mut print_options = PrintOptions {
        format: args.format.into(),
        quiet: args.quiet,
        maxrows: if args.maxrows == 0 {
            MaxRows::Unlimited
        } else {
            MaxRows::Limited(args.maxrows)
        },
        color: false,
        instrumented_registry: registry,
    };
    // A corrupt Parquet file queried by path can make the parquet crate panic while the
    // query runs; that ends the command with an error, not an abort.
    let what = "the files the SQL reads";
    if args.commands.is_empty() && args.files.is_empty() {
        return catch_panics(what, async {
            exec::exec_from_repl(&ctx, &mut print_options)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))
        })
        .await;
    }
    // A file runs as one script: its first failing statement stops it with an error (and a
    // non-zero exit), instead of being printed and skipped.
    let mut scripts = Vec::with_capacity(args.files.len());
    for file in &args.files {
        let text = std::fs::read_to_string(file).map_err(|e| {
            DataFusionError::Execution(format!("cannot read SQL file {}: {e}", file.display()))
        })?;
        scripts.push(text);
    }
    catch_panics(what, async {
        exec::exec_from_commands(&ctx, scripts, &print_options).await?;
        exec::exec_from_commands(&ctx, args.commands, &print_options).await
    })
    .await
}
