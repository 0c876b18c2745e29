//! `arrowquant quantize`: a whole model to an output directory or one GGUF file, with a
//! progress bar, a per-tensor table and a summary.

use std::path::PathBuf;

use clap::Args;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{Field, Float64Type, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::common::{DataFusionError, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::{OutputFormat, QuantConfig, Settings, Value};
use crate::pipeline::gguf_output::is_gguf_path;
use crate::pipeline::{Progress, RunOptions, RunSummary, check_run, plans, quantize, report_rows};

/// Quantize a model (a safetensors file, a sharded checkpoint, a model or diffusers pipeline
/// folder, or a GGUF file) into a directory holding weights.parquet, report.parquet and
/// manifest.json, or into one GGUF file.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The model; the bundled example UNet when omitted.
    pub model: Option<PathBuf>,
    /// Output directory, or GGUF file when it ends in .gguf [default: NAME-PROFILE in the
    /// current directory, NAME-SCHEME.gguf for GGUF output].
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// What to write: parquet (an output directory) or gguf (one file llama.cpp loads)
    /// [default: gguf when OUT ends in .gguf or MODEL is a .gguf file, else parquet].
    #[arg(long, value_name = "F")]
    pub format: Option<String>,
    /// GGUF output: every quantized tensor in the scheme's type, with only the shape
    /// fallbacks (as llama-quantize --pure); no sensitive layers, no quality fallback.
    #[arg(long)]
    pub pure: bool,
    /// GGUF output of an SD1/SDXL UNet: comfyui (ComfyUI-GGUF's form: rows reshaped to 256,
    /// comfy.gguf.orig_shape.*) or sd.cpp (stable-diffusion.cpp's: original shapes, names
    /// under model.diffusion_model.) [default: comfyui].
    #[arg(long, value_name = "T")]
    pub gguf_target: Option<String>,
    /// Bit allocation: the most bytes of tensor data the output may hold (a number of bytes,
    /// or with a unit: 20MB, 1.5GiB); each quantized tensor's format is chosen from the
    /// candidates so that the total error is least within it. GGUF output.
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Bit allocation by bits per weight over all the model's tensor data (as llama.cpp
    /// reports a file's BPW), instead of --max-size.
    #[arg(long, value_name = "B")]
    pub target_bpw: Option<f64>,
    /// The formats bit allocation chooses from, comma-separated [default:
    /// q2_K,q3_K,iq4_xs,q4_K,q5_K,q6_K,q8_0].
    #[arg(long, value_name = "LIST")]
    pub candidates: Option<String>,
    /// REGEX=SCHEME: tensors whose name in the output the pattern finds take that scheme,
    /// before any other rule (the first matching override wins). Repeatable.
    #[arg(long, value_name = "REGEX=SCHEME")]
    pub tensor_type: Vec<String>,
    /// GGUF output in one of llama.cpp's file types, each tensor's type by llama-quantize's
    /// own rules: Q4_K_M, Q4_K_S, Q5_K_M, Q5_K_S, Q3_K_M, Q3_K_S, Q3_K_L, Q2_K, Q6_K, Q8_0,
    /// IQ4_XS, IQ4_NL, Q4_0, …
    #[arg(long, value_name = "NAME")]
    pub recipe: Option<String>,
    /// A llama.cpp importance matrix (llama-imatrix output, GGUF or legacy .dat): each 2-D
    /// tensor's error is weighted per column by the mean square of its input, in the
    /// formats' search and in bit allocation. GGUF output.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Deployment profile: edge (2-bit), local (4-bit), cloud (8-bit).
    #[arg(long, value_name = "P")]
    pub profile: Option<String>,
    /// Bits per weight (2, 3, 4, 5, 6, 8).
    #[arg(long, value_name = "B")]
    pub bits: Option<i64>,
    /// Values per group, or `row`.
    #[arg(long, value_name = "G")]
    pub group_size: Option<String>,
    /// Scheme: asym, sym, asym_minmax, sym_minmax, or a GGUF scheme (q4_0 … q8_0, and the
    /// k-quants and i-quants the kernels have).
    #[arg(long)]
    pub scheme: Option<String>,
    /// Smallest whole-tensor cosine similarity accepted before a tensor is redone wider.
    #[arg(long, value_name = "C")]
    pub min_cosine: Option<f64>,
    /// Keep tensors under the threshold as they are instead of redoing them.
    #[arg(long)]
    pub no_fallback: bool,
    /// Recorded activations (Parquet: layer, timestep, values) to calibrate activation ranges
    /// per timestep group from; writes activation_params.parquet. Each layer names a module of
    /// the model (`conv_in` for the tensor `conv_in.weight`; in a pipeline folder also
    /// `unet.conv_in.weight`); a layer that matches none is an error naming the nearest ones.
    /// Several records of one (layer, timestep), e.g. from several prompts, are samples of it.
    #[arg(long, value_name = "ACTS.parquet")]
    pub calibration: Option<PathBuf>,
    /// Code width of activations (2 to 8).
    #[arg(long, value_name = "B")]
    pub activation_bits: Option<i64>,
    /// Timestep groups per layer.
    #[arg(long, value_name = "N")]
    pub timestep_groups: Option<i64>,
    /// Length of the denoiser's schedule.
    #[arg(long, value_name = "T")]
    pub num_timesteps: Option<i64>,
    /// How timesteps are grouped: uniform, log or adaptive.
    #[arg(long, value_name = "G")]
    pub grouping: Option<String>,
    /// Boundary smoothing of the group ranges: none, linear, cubic or sigmoid.
    #[arg(long, value_name = "M")]
    pub smoothing: Option<String>,
    /// Choose each layer's group ranges jointly (transition optimisation).
    #[arg(long)]
    pub optimize: bool,
    /// A YAML configuration file (keys as ARROW_QUANT_* without the prefix, lower case).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print the SQL the run executes, then run it.
    #[arg(long)]
    pub print_sql: bool,
    /// Print the summary and per-tensor report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

impl QuantizeArgs {
    /// Flags as the highest-priority settings.
    fn settings(&self) -> Settings {
        let mut s = Settings::new("command line");
        if let Some(p) = &self.profile {
            s.set("profile", Value::Text(p.clone()));
        }
        if let Some(b) = self.bits {
            s.set("bit_width", Value::Int(b));
        }
        if let Some(g) = &self.group_size {
            s.set("group_size", Value::Text(g.clone()));
        }
        if let Some(x) = &self.scheme {
            s.set("scheme", Value::Text(x.clone()));
        }
        if let Some(c) = self.min_cosine {
            s.set("min_cosine", Value::Float(c));
        }
        if self.no_fallback {
            s.set("fallback", Value::Bool(false));
        }
        if let Some(path) = &self.calibration {
            s.set("calibration", Value::Text(path.display().to_string()));
        }
        if let Some(b) = self.activation_bits {
            s.set("activation_bits", Value::Int(b));
        }
        if let Some(n) = self.timestep_groups {
            s.set("timestep_groups", Value::Int(n));
        }
        if let Some(n) = self.num_timesteps {
            s.set("num_timesteps", Value::Int(n));
        }
        if let Some(g) = &self.grouping {
            s.set("grouping", Value::Text(g.clone()));
        }
        if let Some(m) = &self.smoothing {
            s.set("smoothing", Value::Text(m.clone()));
        }
        if self.optimize {
            s.set("optimize", Value::Bool(true));
        }
        if let Some(f) = &self.format {
            s.set("format", Value::Text(f.clone()));
        } else if self.model.as_deref().is_some_and(is_gguf_path)
            || self.output.as_deref().is_some_and(is_gguf_path)
        {
            // What the paths say, at the flags' priority: a .gguf OUT is a GGUF file, and a
            // GGUF model is written back as GGUF, as llama-quantize does.
            s.set("format", Value::Text("gguf".into()));
        }
        if self.pure {
            s.set("pure", Value::Bool(true));
        }
        if let Some(t) = &self.gguf_target {
            s.set("gguf_target", Value::Text(t.clone()));
        }
        if let Some(size) = &self.max_size {
            s.set("max_size", Value::Text(size.clone()));
        }
        if let Some(b) = self.target_bpw {
            s.set("target_bpw", Value::Float(b));
        }
        if let Some(list) = &self.candidates {
            s.set("candidates", Value::Text(list.clone()));
        }
        if let Some(path) = &self.imatrix {
            s.set("imatrix", Value::Text(path.display().to_string()));
        }
        if let Some(r) = &self.recipe {
            s.set("recipe", Value::Text(r.clone()));
        }
        if !self.tensor_type.is_empty() {
            s.set("tensor_type", Value::Text(self.tensor_type.join(";")));
        }
        s
    }

    pub fn config(&self) -> Result<QuantConfig> {
        let yaml = self
            .config
            .as_deref()
            .map(Settings::from_yaml_file)
            .transpose()
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let env = Settings::from_process_env().map_err(|e| DataFusionError::Plan(e.to_string()))?;
        QuantConfig::resolve(&env, yaml.as_ref(), &self.settings())
            .map_err(|e| DataFusionError::Plan(e.to_string()))
    }
}

pub async fn run(args: QuantizeArgs) -> Result<()> {
    let config = args.config()?;
    let model = args.model.clone().unwrap_or_else(super::bundled_model);
    // Refused before any work: no file is opened for what the run cannot do.
    check_run(&model, &config)?;
    let gguf = config.format == OutputFormat::Gguf;
    let output = args.output.clone().unwrap_or_else(|| {
        let name = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        if let (true, Some(recipe)) = (gguf, &config.recipe) {
            PathBuf::from(format!("{name}-{recipe}.gguf"))
        } else if gguf && config.allocating() {
            PathBuf::from(format!("{name}-mixed.gguf"))
        } else if gguf {
            PathBuf::from(format!("{name}-{}.gguf", config.scheme))
        } else {
            PathBuf::from(format!("{name}-{}", config.profile))
        }
    });
    if args.print_sql && !gguf {
        for (what, sql) in plans(&model, &config) {
            println!("-- {what}\n{sql};\n");
        }
    }
    let bar = progress_bar(args.quiet);
    let report = |p: Progress| match p {
        Progress::Start { phase, bytes } => {
            bar.set_length(bytes);
            bar.set_position(0);
            bar.set_message(phase);
        }
        Progress::Advance { bytes } => bar.inc(bytes),
    };
    let options = RunOptions {
        model,
        output,
        config,
        force: args.force,
    };
    let summary = quantize(&options, &report).await;
    bar.finish_and_clear();
    let summary = summary?;
    if args.json {
        print_json(&summary)?;
    } else {
        print_tables(&summary)?;
    }
    Ok(())
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    // Drawn on stderr only when it is a terminal.
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

fn print_tables(summary: &RunSummary) -> Result<()> {
    let shown: Vec<RecordBatch> = summary
        .report
        .iter()
        .map(|b| {
            // A GGUF run's report also says each tensor's GGUF type.
            let names: Vec<&str> = [
                "layer",
                "shape",
                "action",
                "ggml_type",
                "bits",
                "group_size",
                "scheme",
                "cosine",
                "sqnr_db",
                "bytes_before",
                "bytes_after",
            ]
            .into_iter()
            .filter(|n| *n != "ggml_type" || b.column_by_name(n).is_some())
            .collect();
            let columns = names
                .iter()
                .map(|n| {
                    let column = b.column_by_name(n).expect("a report column").clone();
                    match *n {
                        "cosine" => rounded(&column, 6),
                        "sqnr_db" => rounded(&column, 2),
                        _ => column,
                    }
                })
                .collect::<Vec<_>>();
            let fields: Vec<Field> = names
                .iter()
                .zip(&columns)
                .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
                .collect();
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        })
        .collect::<std::result::Result<_, _>>()?;
    println!("{}", pretty_format_batches(&shown)?);
    print!("{}", summary_text(summary));
    Ok(())
}

/// A float column as text with `digits` decimals, for the table only (report.parquet keeps
/// full precision).
fn rounded(column: &ArrayRef, digits: usize) -> ArrayRef {
    let values = column.as_primitive::<Float64Type>();
    Arc::new(StringArray::from_iter(
        values.iter().map(|v| v.map(|x| format!("{x:.digits$}"))),
    ))
}

/// The closing lines of a run.
pub fn summary_text(s: &RunSummary) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let activations = match &s.activations {
        None => String::new(),
        Some(a) => {
            let mut steps = Vec::new();
            if a.optimized {
                steps.push("optimised".to_string());
            }
            if a.smoothing != "none" {
                steps.push(format!("{} smoothing", a.smoothing));
            }
            let after = if steps.is_empty() {
                String::new()
            } else {
                format!(" -> {:.4e} {}", a.mse_after, steps.join(" + "))
            };
            format!(
                "activations: {} layers x {} {} groups at {} bits from {} records: \
                 mean MSE {:.4e} static -> {:.4e} grouped{after}\n\
                 markov violations: {} before, {} after\n",
                a.layers,
                a.groups / a.layers.max(1),
                a.grouping,
                a.bits,
                a.records,
                a.static_mse,
                a.mse_before,
                a.markov_violations_before,
                a.markov_violations_after,
            )
        }
    };
    let allocation = match &s.allocation {
        None => String::new(),
        Some(a) => {
            let target = match a.target_bpw {
                Some(b) => format!("target {b} bits a weight"),
                None => format!("at most {} bytes", a.budget_bytes),
            };
            let gap = if a.lower_bound > 0.0 {
                format!(
                    "{:.3} % above the bound {:.4e}",
                    100.0 * (a.error / a.lower_bound - 1.0),
                    a.lower_bound
                )
            } else {
                "the optimum".to_string()
            };
            format!(
                "allocation: {} tensors from {}: {} bytes of tensor data, {:.4} bits a weight \
                 ({target}); weighted squared error {:.4e}, {gap}\n",
                a.allocated,
                a.candidates.join(","),
                a.tensor_bytes,
                a.bits_per_weight,
                a.error,
            )
        }
    };
    let warnings: String = s
        .warnings
        .iter()
        .map(|w| format!("warning: {w}\n"))
        .collect();
    format!(
        "model: {} ({})\n\
         tensors: {} ({} quantized, {} kept, {} redone wider)\n\
         size: {:.2} MB -> {:.2} MB ({:.2}x)\n\
         cosine: min {:.6}, mean {:.6}\n\
         {allocation}{warnings}\
         {activations}\
         time: {:.2} s ({:.0} MB/s)\n\
         output: {}\n",
        s.modality.modality,
        s.modality.evidence,
        s.tensors,
        s.quantized,
        s.kept,
        s.fallbacks,
        mb(s.bytes_before),
        mb(s.bytes_after),
        s.compression_ratio,
        s.min_cosine,
        s.mean_cosine,
        s.seconds,
        s.mb_per_second,
        s.output.display(),
    )
}

fn print_json(summary: &RunSummary) -> Result<()> {
    let mut value =
        serde_json::to_value(summary).map_err(|e| DataFusionError::External(Box::new(e)))?;
    value["tensors_report"] = report_rows(&summary.report)?;
    println!("{}", serde_json::to_string_pretty(&value).expect("JSON"));
    Ok(())
}
