//! `arrowquant export`: an output directory of `arrowquant quantize` as one GGUF file, its
//! quantized tensors' blocks copied as they are (see `pipeline::gguf_export`).

use std::path::PathBuf;

use clap::Args;
use datafusion::common::Result;

use crate::pipeline::gguf_export::export_gguf;

/// Write an output directory whose tensors are in GGUF schemes (q4_0 … q8_0, the k-quants,
/// iq4_nl, iq4_xs) as one GGUF file, without quantizing again.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The output directory of `arrowquant quantize` (manifest.json, weights.parquet).
    pub quantized: PathBuf,
    /// The GGUF file to write.
    #[arg(short, long, value_name = "OUT.gguf")]
    pub output: PathBuf,
    /// Replace OUT if it is a regular file.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(args: ExportArgs) -> Result<()> {
    let s = export_gguf(&args.quantized, &args.output, args.force).await?;
    let types: Vec<String> = s.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!(
        "wrote {} ({} tensors: {}; {:.2} MB)\nmetadata: {}",
        s.output.display(),
        s.tensors,
        types.join(", "),
        s.bytes as f64 / 1e6,
        s.metadata
    );
    Ok(())
}
