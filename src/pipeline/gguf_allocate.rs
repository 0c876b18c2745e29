//! Per-tensor formats for a GGUF output: `--tensor-type REGEX=SCHEME` overrides, and bit
//! allocation under a size budget (`--max-size`, `--target-bpw`).
//!
//! Allocation measures an error curve: for every tensor llama.cpp quantizes (and no override
//! fixes) and every candidate format (each with the tensor's row fallback applied, the same
//! format counted once), the exact bytes and the squared error Σ(w − ŵ)² of a quantization
//! pass over a sample of its rows ([`MEASURED_ROWS`]), codes dropped. The curve is a table, `error_curves`, and the choice is SQL over it:
//! `allocate_bits(layer, bytes, error, budget) OVER ()`, the budget being what the tensors
//! not allocated leave of the total.
//!
//! The error a tensor contributes is its squared error times a data-free prior of how much of
//! it reaches each token's output ([`role_weight`]): for a linear layer whose input channels
//! have unit mean square (what the norms in front of most projections give), its squared
//! error is the expected squared error of its output for every token; a token embedding
//! gives each token one of its rows, so its error counts once per row, `1 / rows` of it —
//! unless the same table is also the output head (tied embeddings), where it counts as a
//! linear layer too.

use std::sync::Arc;

use arrowquant_udfs::kernels::metrics::PairSums;
use arrowquant_udfs::kernels::scheme::Scheme;
use datafusion::arrow::array::{
    ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{Float64Type, UInt64Type};
use datafusion::common::{DataFusionError, Result, exec_datafusion_err};
use regex::Regex;
use serde::Serialize;

use super::gguf_output::{
    InputTensor, Planned, Storage, TensorReader, as_stored, block_spec, gguf_type_of, row_storage,
};
use super::run::Progress;
use crate::config::{DEFAULT_CANDIDATES, QuantConfig, TensorType};
use crate::model::gguf_file::GgmlType;

/// The table the error curve is registered as while the allocation query runs.
const CURVES: &str = "error_curves";

/// A compiled `--tensor-type` override.
struct Override {
    regex: Regex,
    given: TensorType,
    matched: usize,
}

/// Applies the overrides to the tensors llama.cpp quantizes; returns, per tensor, whether an
/// override fixed it, and a warning for each pattern that matched none.
pub(super) fn apply_overrides(
    config: &QuantConfig,
    tensors: &[InputTensor],
    names: &[String],
    plans: &mut [Planned],
) -> Result<(Vec<bool>, Vec<String>)> {
    let mut overrides = config
        .tensor_types
        .iter()
        .map(|given| {
            let regex = Regex::new(&given.pattern).map_err(|e| {
                DataFusionError::Plan(format!(
                    "tensor_type '{}={}': the pattern does not compile: {e}",
                    given.pattern, given.scheme
                ))
            })?;
            block_spec(given.scheme).map_err(|e| {
                DataFusionError::Plan(format!(
                    "tensor_type '{}={}': {e}",
                    given.pattern, given.scheme
                ))
            })?;
            Ok(Override {
                regex,
                given: given.clone(),
                matched: 0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut fixed = vec![false; plans.len()];
    for (i, ((t, name), p)) in tensors.iter().zip(names).zip(plans.iter_mut()).enumerate() {
        if !(p.selected && matches!(p.storage, Storage::Blocks(_))) {
            continue;
        }
        let Some(o) = overrides.iter_mut().find(|o| o.regex.is_match(name)) else {
            continue;
        };
        o.matched += 1;
        let spec = block_spec(o.given.scheme).map_err(DataFusionError::Plan)?;
        let ne0 = p.dims(t)[0] as usize;
        if !spec.accepts_row(ne0) {
            return Err(DataFusionError::Plan(format!(
                "tensor '{name}': the override '{}={}' cannot take it: its rows of {ne0} values \
                 are not whole {} blocks of {}",
                o.given.pattern,
                o.given.scheme,
                o.given.scheme,
                spec.scheme.block_values().unwrap_or(0)
            )));
        }
        p.storage = Storage::Blocks(spec);
        p.ggml_type = gguf_type_of(spec.scheme)?;
        p.reason = format!("--tensor-type {}={}", o.given.pattern, o.given.scheme);
        fixed[i] = true;
    }
    let warnings = overrides
        .iter()
        .filter(|o| o.matched == 0)
        .map(|o| {
            format!(
                "tensor_type '{}={}' matches no tensor that llama.cpp quantizes",
                o.given.pattern, o.given.scheme
            )
        })
        .collect();
    Ok((fixed, warnings))
}

/// Encoder architectures (BERT's family): their token table is only looked up, never an
/// output head, even without an `output.weight`.
fn is_encoder(architecture: &str) -> bool {
    architecture.contains("bert") || architecture == "t5encoder"
}

/// The data-free prior: how much of a tensor's squared error reaches a token's output, and
/// why (see the module's documentation).
pub(super) fn role_weight(
    name: &str,
    rows: usize,
    architecture: &str,
    has_output_head: bool,
) -> (f64, Option<String>) {
    let lookup = name == "token_embd.weight" || name == "per_layer_token_embd.weight";
    if !lookup || rows == 0 {
        return (1.0, None);
    }
    let per_row = 1.0 / rows as f64;
    if name == "token_embd.weight" && !has_output_head && !is_encoder(architecture) {
        return (
            1.0 + per_row,
            Some(format!(
                "tied output head and embedding: weight 1 + 1/{rows}"
            )),
        );
    }
    (
        per_row,
        Some(format!("an embedding, one row a token: weight 1/{rows}")),
    )
}

/// What the allocation did, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct AllocationSummary {
    /// The budget of all tensor data, in bytes.
    pub budget_bytes: u64,
    /// What the tensor data takes.
    pub tensor_bytes: u64,
    /// Bits per weight over all tensor data, and the target when one was given.
    pub bits_per_weight: f64,
    pub target_bpw: Option<f64>,
    pub candidates: Vec<String>,
    /// Tensors allocated (the others are fixed: kept, overridden, or with one format).
    pub allocated: usize,
    /// Total squared error of the allocated tensors, and the bound no choice goes below.
    pub error: f64,
    pub lower_bound: f64,
}

/// One candidate format of one tensor.
struct Format {
    storage: Storage,
    ggml_type: GgmlType,
    /// The fallback note of its row, when it is not the candidate's own format.
    why: Option<String>,
    bytes: u64,
    sums: Option<PairSums>,
    /// Σ importance·(w − ŵ)², scaled as `sums`, for a tensor with importance.
    weighted: Option<f64>,
}

/// Rows measured per tensor at least: a tensor of more rows is measured on every k-th row
/// (k the fewest that keeps at least this many), its error scaled up. Per-row errors of one
/// tensor are alike, so the estimate is close (at 512 rows, a few per cent at worst), and a
/// 30 000-row embedding costs the curve 600 rows, not 30 000.
pub const MEASURED_ROWS: usize = 512;

/// Every how many rows a tensor's error curve is measured.
fn sample_stride(t: &InputTensor) -> usize {
    let rows = t.shape.first().copied().unwrap_or(1);
    (rows / MEASURED_ROWS).max(1)
}

/// Sums of a sample of rows scaled to the tensor's `values`: an estimate of the whole.
fn scaled(mut sums: PairSums, values: u64) -> PairSums {
    if sums.n > 0 && (sums.n as u64) < values {
        let k = values as f64 / sums.n as f64;
        sums.dot *= k;
        sums.aa *= k;
        sums.bb *= k;
        sums.sq_err *= k;
        sums.n = values as usize;
    }
    sums
}

/// The error allocation minimises for a measured candidate: its squared error weighted by
/// the importance matrix when the tensor has one (the mean squares of its input: the expected
/// squared error of its output), and by the role prior.
fn weighted(o: &Format, weight: f64) -> Option<f64> {
    let error = o.weighted.or(o.sums.map(|s| s.sq_err))?;
    Some(error * weight)
}

fn tensor_bytes(t: &InputTensor, ty: GgmlType) -> Result<u64> {
    let elements: u64 = t.shape.iter().map(|&d| d as u64).product();
    ty.bytes_of(elements).ok_or_else(|| {
        exec_datafusion_err!(
            "tensor '{}': {elements} values are not whole {} blocks",
            t.name,
            ty.name
        )
    })
}

/// Chooses each free tensor's format within the budget (see the module's documentation).
#[allow(clippy::too_many_arguments)]
pub(super) async fn allocate(
    reader: &TensorReader<'_>,
    tensors: &[InputTensor],
    names: &[String],
    plans: &mut [Planned],
    fixed: &[bool],
    config: &QuantConfig,
    architecture: &str,
    comfy: bool,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<AllocationSummary> {
    let has_output_head = names.iter().any(|n| n == "output.weight");
    let weights: Vec<(f64, Option<String>)> = tensors
        .iter()
        .zip(names)
        .map(|(t, n)| {
            role_weight(
                n,
                t.shape.first().copied().unwrap_or(0),
                architecture,
                has_output_head,
            )
        })
        .collect();
    let ladder: Vec<Scheme> = if config.candidates.is_empty() {
        DEFAULT_CANDIDATES.to_vec()
    } else {
        config.candidates.clone()
    };
    let ladder_specs = ladder
        .iter()
        .map(|&s| block_spec(s).map_err(|e| DataFusionError::Plan(format!("candidates: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let elements: u64 = tensors
        .iter()
        .map(|t| t.shape.iter().map(|&d| d as u64).product::<u64>())
        .sum();
    let budget = match (config.max_size, config.target_bpw) {
        (Some(bytes), _) => bytes,
        (None, Some(bpw)) => (bpw * elements as f64 / 8.0).floor() as u64,
        (None, None) => return Err(DataFusionError::Plan("allocation without a budget".into())),
    };

    // Each free tensor's candidates; the others' bytes are fixed.
    let mut options: Vec<Option<Vec<Format>>> = Vec::with_capacity(plans.len());
    for ((t, p), &is_fixed) in tensors.iter().zip(plans.iter()).zip(fixed) {
        let free = p.selected && !is_fixed && matches!(p.storage, Storage::Blocks(_));
        if !free {
            options.push(None);
            continue;
        }
        let ne0 = p.dims(t)[0] as usize;
        let mut list: Vec<Format> = Vec::new();
        for &spec in &ladder_specs {
            let (storage, ggml_type, why) = row_storage(spec, ne0, comfy)?;
            if storage == Storage::F16 || list.iter().any(|o| o.ggml_type == ggml_type) {
                continue;
            }
            list.push(Format {
                storage,
                ggml_type,
                why,
                bytes: tensor_bytes(t, ggml_type)?,
                sums: None,
                weighted: None,
            });
        }
        options.push((list.len() > 1).then_some(list));
    }

    // Sizes are known before anything is measured: a budget out of reach fails at once, and
    // again after measuring if refused candidates narrowed the range.
    check_budget(tensors, plans, &options, &ladder, budget, elements, config)?;

    // The error curve: one measuring pass per candidate.
    let measured_bytes: u64 = tensors
        .iter()
        .zip(&options)
        .filter_map(|(t, o)| o.as_ref().map(|o| t.bytes * o.len() as u64))
        .sum();
    progress(Progress::Start {
        phase: "error curves".into(),
        bytes: measured_bytes,
    });
    for ((t, p), list) in tensors.iter().zip(plans.iter_mut()).zip(options.iter_mut()) {
        let Some(candidates) = list.as_mut() else {
            continue;
        };
        let values: u64 = t.shape.iter().map(|&d| d as u64).product();
        let stride = sample_stride(t);
        let trials: Vec<Planned> = candidates
            .iter()
            .map(|o| Planned {
                storage: o.storage,
                ggml_type: o.ggml_type,
                reason: String::new(),
                fallback_from: None,
                selected: true,
                sums: None,
                reshaped: p.reshaped,
            })
            .collect();
        // One query reads the rows once and measures them in every candidate format.
        let reads = reader.measure_each(t, &trials, stride).await?;
        progress(Progress::Advance {
            bytes: t.bytes * candidates.len() as u64,
        });
        for (o, read) in candidates.iter_mut().zip(reads) {
            match read.refused {
                None => {
                    let n = read.sums.n;
                    o.sums = Some(scaled(read.sums, values));
                    o.weighted = read.weighted.map(|w| w * values as f64 / n.max(1) as f64);
                }
                Some(r) if r.beyond_f16 => {}
                Some(r) => {
                    return Err(exec_datafusion_err!(
                        "tensor '{}' row {}: {}",
                        t.name,
                        r.row,
                        r.reason
                    ));
                }
            }
        }
        if candidates.iter().all(|o| o.sums.is_none()) {
            let (selected, reshaped) = (p.selected, p.reshaped);
            *p = as_stored(
                t,
                "values beyond f16 range in every candidate format".into(),
            )?;
            (p.selected, p.reshaped) = (selected, reshaped);
            *list = None;
        }
    }

    let fixed_bytes = check_budget(tensors, plans, &options, &ladder, budget, elements, config)?;
    let bpw = |bytes: u64| bytes as f64 * 8.0 / elements.max(1) as f64;

    // The curve as a table, and the choice in SQL.
    let (mut layers, mut types, mut bytes, mut errors) = (vec![], vec![], vec![], vec![]);
    for ((name, list), (weight, _)) in names.iter().zip(&options).zip(&weights) {
        for o in list.iter().flatten() {
            layers.push(name.clone());
            types.push(o.ggml_type.name);
            bytes.push(o.bytes as i64);
            errors.push(weighted(o, *weight));
        }
    }
    let allocated = options.iter().flatten().count();
    let mut summary = AllocationSummary {
        budget_bytes: budget,
        tensor_bytes: fixed_bytes,
        bits_per_weight: bpw(fixed_bytes),
        target_bpw: config.target_bpw.filter(|_| config.max_size.is_none()),
        candidates: ladder.iter().map(|s| s.to_string()).collect(),
        allocated,
        error: 0.0,
        lower_bound: 0.0,
    };
    if allocated == 0 {
        return Ok(summary);
    }
    let curve = RecordBatch::try_from_iter([
        ("layer", Arc::new(StringArray::from(layers)) as ArrayRef),
        ("ggml_type", Arc::new(StringArray::from(types)) as ArrayRef),
        ("bytes", Arc::new(Int64Array::from(bytes)) as ArrayRef),
        ("error", Arc::new(Float64Array::from(errors)) as ArrayRef),
    ])?;
    reader.ctx.register_batch(CURVES, curve)?;
    let sql = format!(
        "SELECT layer, ggml_type, a['total_bytes'] AS total_bytes, a['total_error'] AS total_error, \
         a['lower_bound'] AS lower_bound FROM (SELECT layer, ggml_type, \
         allocate_bits(layer, bytes, error, {}) OVER () AS a FROM {CURVES}) WHERE a['chosen']",
        budget - fixed_bytes
    );
    let chosen = reader.ctx.sql(&sql).await;
    let chosen = match chosen {
        Ok(df) => df.collect().await,
        Err(e) => Err(e),
    };
    reader.ctx.deregister_table(CURVES)?;
    let chosen = chosen?;

    for batch in &chosen {
        let layer = batch.column(0).as_string::<i32>();
        let ty = batch.column(1).as_string::<i32>();
        for row in 0..batch.num_rows() {
            let i = names
                .iter()
                .position(|n| n == layer.value(row))
                .ok_or_else(|| exec_datafusion_err!("allocation chose an unknown tensor"))?;
            let list = options[i]
                .as_ref()
                .expect("allocated tensors have candidates");
            let k = list
                .iter()
                .position(|o| o.ggml_type.name == ty.value(row))
                .ok_or_else(|| exec_datafusion_err!("allocation chose an unknown format"))?;
            place(&tensors[i], &mut plans[i], list, k, &weights[i]);
        }
        if batch.num_rows() > 0 {
            summary.tensor_bytes =
                fixed_bytes + batch.column(2).as_primitive::<UInt64Type>().value(0);
            summary.error = batch.column(3).as_primitive::<Float64Type>().value(0);
            summary.lower_bound = batch.column(4).as_primitive::<Float64Type>().value(0);
        }
    }
    summary.bits_per_weight = bpw(summary.tensor_bytes);
    Ok(summary)
}

/// Gives tensor `t` candidate `k` of `list`, its reason saying what one step up would cost
/// and save.
fn place(
    t: &InputTensor,
    p: &mut Planned,
    list: &[Format],
    k: usize,
    (weight, why_weight): &(f64, Option<String>),
) {
    let o = &list[k];
    let values: u64 = t.shape.iter().map(|&d| d as u64).product();
    let err = weighted(o, *weight).unwrap_or(f64::NAN);
    let up = list
        .iter()
        .filter(|u| u.bytes > o.bytes && weighted(u, *weight).is_some_and(|e| e < err))
        .min_by_key(|u| u.bytes);
    let next = match up {
        Some(u) => {
            let e = weighted(u, *weight).unwrap_or(f64::NAN);
            format!(
                "; one step up, {}: +{} bytes for {:.1} % less error",
                u.ggml_type.name,
                u.bytes - o.bytes,
                100.0 * (1.0 - e / err)
            )
        }
        None => String::new(),
    };
    p.storage = o.storage;
    p.ggml_type = o.ggml_type;
    // The report's figures come from the writing pass over every row, not the sample.
    p.sums = None;
    p.reason = format!(
        "allocated: {} at {:.3} bits a weight, weighted squared error {err:.4e}{}{}{next}",
        o.ggml_type.name,
        o.bytes as f64 * 8.0 / values.max(1) as f64,
        why_weight
            .as_deref()
            .map(|w| format!(" ({w})"))
            .unwrap_or_default(),
        o.why
            .as_deref()
            .map(|w| format!("; {w}"))
            .unwrap_or_default(),
    );
}

/// The bytes of the tensors not allocated, once the budget is known to be within what the
/// candidates reach (else an error giving that range).
fn check_budget(
    tensors: &[InputTensor],
    plans: &[Planned],
    options: &[Option<Vec<Format>>],
    ladder: &[Scheme],
    budget: u64,
    elements: u64,
    config: &QuantConfig,
) -> Result<u64> {
    let measured = options.iter().flatten().flatten().any(|o| o.sums.is_some());
    let fixed_bytes: u64 = tensors
        .iter()
        .zip(plans.iter())
        .zip(options)
        .filter(|(_, o)| o.is_none())
        .map(|((t, p), _)| tensor_bytes(t, p.ggml_type))
        .sum::<Result<u64>>()?;
    let (mut low, mut high) = (fixed_bytes, fixed_bytes);
    for list in options.iter().flatten() {
        let usable = list
            .iter()
            .filter(|o| o.sums.is_some() || !measured)
            .map(|o| o.bytes);
        low += usable.clone().min().unwrap_or(0);
        high += usable.max().unwrap_or(0);
    }
    let bpw = |bytes: u64| bytes as f64 * 8.0 / elements.max(1) as f64;
    let range = || {
        format!(
            "the candidates ({}) reach {low} to {high} bytes of tensor data ({:.3} to {:.3} bits \
             per weight)",
            ladder
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
            bpw(low),
            bpw(high)
        )
    };
    let asked = match config.target_bpw {
        Some(b) if config.max_size.is_none() => format!("target_bpw {b} ({budget} bytes)"),
        _ => format!("max_size {budget} bytes"),
    };
    if budget < low {
        return Err(DataFusionError::Plan(format!(
            "{asked} is below the smallest mixture: {}",
            range()
        )));
    }
    if budget > high {
        return Err(DataFusionError::Plan(format!(
            "{asked} is above the largest mixture: {}",
            range()
        )));
    }

    Ok(fixed_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_embedding_counts_one_row_a_token_unless_it_is_also_the_head() {
        assert_eq!(
            role_weight("blk.0.attn_q.weight", 4096, "llama", true).0,
            1.0
        );
        let (w, why) = role_weight("token_embd.weight", 32000, "llama", true);
        assert_eq!(w, 1.0 / 32000.0);
        assert!(why.unwrap().contains("1/32000"));
        // Tied: the table is the output head too.
        assert_eq!(
            role_weight("token_embd.weight", 32000, "llama", false).0,
            1.0 + 1.0 / 32000.0
        );
        // An encoder's table is only looked up.
        assert_eq!(
            role_weight("token_embd.weight", 30522, "bert", false).0,
            1.0 / 30522.0
        );
    }
}
