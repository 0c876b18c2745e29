//! `arrowquant quantize MODEL -o OUT.gguf`: one model in (a GGUF file, or the checkpoints the
//! pipeline takes), one GGUF file out, as llama.cpp's `llama-quantize` writes it.
//!
//! 1. Every tensor is planned before anything is read: the ones llama.cpp would quantize
//!    ([`gguf_select`](super::gguf_select)) get the scheme's GGUF type, or the type its shape
//!    fallback gives (`QuantSpec::for_gguf_row`, on ggml's row, the innermost dimension), or F16;
//!    the others are stored as they are (1-D float tensors of a checkpoint widened to F32, as
//!    llama.cpp's converter stores them).
//! 2. Without `--pure`, the pipeline's strategy: sensitive tensors at the sensitive width, and a
//!    measuring pass (the quantization query, codes dropped) redoes each tensor under the
//!    cosine threshold one step wider, and keeps as stored the tensors beyond f16 range. Types,
//!    and so every size, are then known.
//! 3. The header is written, then each tensor's bytes in order, by a query per tensor whose rows
//!    are placed by their row number: one tensor is in memory at a time, never the model.
//!
//! The file is written under a temporary name beside OUT and renamed into place when complete
//! (see [`output`](super::output)).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrowquant_udfs::kernels::metrics::PairSums;
use arrowquant_udfs::kernels::scheme::{QuantSpec, SCHEME_NAMES, Scheme};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float64Array, Int64Array, ListArray, RecordBatch,
    StringArray, UInt8Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Int64Type, Schema};
use datafusion::common::{DataFusionError, Result, exec_datafusion_err};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::gguf_allocate::{allocate, apply_overrides};
use super::gguf_arch::{ArchLayout, RowOrder, diffusion, sd_cpp};
use super::gguf_importance::importance_of;
use super::gguf_metadata::{Provenance, carried_metadata, finish_metadata, llama_ftype};
use super::gguf_recipe::apply_recipe;
use super::gguf_select::{ggml_dims, gguf_sensitivity, kept_by_llama_cpp};
use super::modality::{Detection, Modality, detect};
use super::output::{Inputs, PartialFile};
use super::plan::{group_literal, sql_string};
use super::recipes::Recipe;
use super::run::{Progress, RunOptions, RunSummary};
use super::strategy::sensitivity;
use crate::config::{GgufTarget, QuantConfig};
use crate::model::gguf_file::{GgmlType, GgufFile};
use crate::model::gguf_write::{GgufWriter, MetaValue, TensorInfo};
use crate::model::safetensors_file::dtype_name;
use crate::model::{Model, row_layout, row_values};

/// The scheme's GGUF type, or an error naming the scheme and the schemes that have one.
pub fn gguf_type_of(scheme: Scheme) -> Result<GgmlType> {
    scheme
        .ggml_type()
        .and_then(GgmlType::from_id)
        .ok_or_else(|| {
            DataFusionError::Plan(format!(
                "scheme '{scheme}' has no GGUF type: GGUF output takes {}",
                gguf_scheme_names().join(", ")
            ))
        })
}

/// The schemes with a GGUF type, as the kernels list them.
pub fn gguf_scheme_names() -> Vec<String> {
    SCHEME_NAMES
        .split(", ")
        // Each item is a quoted name, the last one possibly followed by a remark.
        .filter_map(|item| item.split('\'').nth(1))
        .filter(|n| Scheme::parse(n).is_ok_and(|s| s.ggml_type().is_some()))
        .map(str::to_string)
        .collect()
}

/// Where the tensors come from, and the table function that reads them.
pub enum Source {
    Gguf(Arc<GgufFile>),
    Checkpoint(Model),
}

impl Source {
    /// A `.gguf` file, or anything the pipeline reads.
    pub fn open(path: &Path) -> Result<Source> {
        if is_gguf_path(path) && !path.is_dir() {
            Ok(Source::Gguf(Arc::new(crate::open_gguf(path)?)))
        } else {
            Ok(Source::Checkpoint(crate::open_model(path)?))
        }
    }

    fn table_function(&self) -> &'static str {
        match self {
            Source::Gguf(_) => "read_gguf",
            Source::Checkpoint(_) => "read_safetensors",
        }
    }

    /// Every file the output must never replace.
    pub fn inputs(&self, path: &Path) -> Inputs {
        match self {
            Source::Gguf(file) => {
                let mut inputs = Inputs::default();
                inputs.add(file.path(), "model");
                inputs.add(path, "model");
                inputs
            }
            Source::Checkpoint(model) => Inputs::of_model(model),
        }
    }

    fn detection(&self) -> Detection {
        match self {
            Source::Gguf(file) => {
                let arch = file
                    .header()
                    .metadata
                    .iter()
                    .find(|e| e.key == "general.architecture")
                    .map(|e| file.text(e))
                    .unwrap_or_else(|| "unknown".into());
                Detection {
                    modality: Modality::Text,
                    evidence: format!("general.architecture = {arch} in {}", file.path().display()),
                }
            }
            Source::Checkpoint(model) => detect(model),
        }
    }

    /// The tensors in the order they are written.
    fn tensors(&self) -> Vec<InputTensor> {
        match self {
            Source::Gguf(file) => file
                .tensors()
                .iter()
                .map(|t| InputTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    dims: t.dims.clone(),
                    dtype: t.ggml_type.name.to_string(),
                    stored: Some(t.ggml_type),
                    float: !t.ggml_type.is_integer(),
                    block: t.ggml_type.block_values > 1,
                    from_checkpoint: false,
                    bytes: t.len as u64,
                })
                .collect(),
            Source::Checkpoint(model) => model
                .tensors
                .iter()
                .map(|t| {
                    let dtype = dtype_name(t.meta.dtype);
                    let dims = row_major_dims(&t.meta.shape);
                    InputTensor {
                        name: t.layer.clone(),
                        shape: t.meta.shape.clone(),
                        dims,
                        stored: GgmlType::from_name(&dtype).filter(|g| g.block_values == 1),
                        float: crate::model::is_float(t.meta.dtype),
                        block: false,
                        from_checkpoint: true,
                        dtype,
                        bytes: t.meta.len as u64,
                    }
                })
                .collect(),
        }
    }

    /// A checkpoint's keys and tensor names in the output (`None` for a GGUF input, whose
    /// names are kept).
    fn layout(&self, target: GgufTarget) -> Result<Option<ArchLayout>> {
        match self {
            Source::Gguf(file) if target == GgufTarget::SdCpp => {
                Err(DataFusionError::Plan(format!(
                    "{}: gguf_target sd.cpp: a GGUF file is written back as it is; only SD1/SDXL \
                 UNet checkpoints are written in stable-diffusion.cpp's form",
                    file.path().display()
                )))
            }
            Source::Gguf(_) => Ok(None),
            Source::Checkpoint(model) => {
                super::gguf_checkpoint::checkpoint_layout(model, target).map(Some)
            }
        }
    }

    /// The metadata carried into the output, before this run's keys.
    fn metadata(&self, layout: Option<&ArchLayout>) -> Result<Vec<(String, MetaValue)>> {
        match (self, layout) {
            (Source::Gguf(file), _) => carried_metadata(file),
            (Source::Checkpoint(_), Some(layout)) => Ok(layout.metadata.clone()),
            (Source::Checkpoint(model), None) => {
                Ok(super::gguf_checkpoint::checkpoint_metadata(model))
            }
        }
    }
}

/// Whether a path names a GGUF file (by its extension, as llama.cpp's tools take them).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// ggml's `ne` (innermost first) of a row-major shape; a scalar is one value, a 1-D tensor of
/// one.
pub(super) fn row_major_dims(shape: &[usize]) -> Vec<u64> {
    let mut dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
    if dims.is_empty() {
        dims.push(1);
    }
    dims
}

/// One tensor of the input.
#[derive(Debug, Clone)]
pub(super) struct InputTensor {
    pub(super) name: String,
    /// Row-major, outermost first: the rows of the weights table.
    pub(super) shape: Vec<usize>,
    /// ggml's `ne`, innermost first: what the output's header says.
    pub(super) dims: Vec<u64>,
    /// The type name in the table's `dtype` column.
    pub(super) dtype: String,
    /// The GGUF type that holds its bytes as they are; `None` for a dtype GGUF has no type for.
    pub(super) stored: Option<GgmlType>,
    /// Its values read as floats (the table's `weights`).
    pub(super) float: bool,
    /// Already in a block type.
    pub(super) block: bool,
    pub(super) from_checkpoint: bool,
    pub(super) bytes: u64,
}

/// How a tensor's bytes are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Storage {
    /// The blocks of a GGUF scheme: `quantize`'s codes.
    Blocks(QuantSpec),
    /// The values as F16: rows that no block of the scheme (or its fallback) divides.
    F16,
    /// The values widened to F32.
    F32,
    /// The bytes as stored.
    AsStored,
}

/// What becomes of one tensor.
#[derive(Debug, Clone)]
pub(super) struct Planned {
    pub(super) ggml_type: GgmlType,
    pub(super) storage: Storage,
    pub(super) reason: String,
    /// The setting a quality fallback started from.
    pub(super) fallback_from: Option<String>,
    /// Whether llama.cpp would quantize it (what `quantize.mixture` describes).
    pub(super) selected: bool,
    pub(super) sums: Option<PairSums>,
    /// The shape (outermost first) ComfyUI-GGUF's rules give it in the file, when not its own.
    pub(super) reshaped: Option<[usize; 2]>,
}

impl Planned {
    fn keep(ggml_type: GgmlType, storage: Storage, reason: String) -> Planned {
        Planned {
            ggml_type,
            storage,
            reason,
            fallback_from: None,
            selected: false,
            sums: None,
            reshaped: None,
        }
    }

    /// ggml's `ne` in the file.
    pub(super) fn dims(&self, t: &InputTensor) -> Vec<u64> {
        self.reshaped
            .map_or_else(|| t.dims.clone(), |s| row_major_dims(&s))
    }
}

fn type_of_id(id: u32, scheme: Scheme) -> Result<GgmlType> {
    GgmlType::from_id(id).ok_or_else(|| {
        exec_datafusion_err!("scheme '{scheme}' names GGUF type {id}, which GGUF does not define")
    })
}

/// How a row of `ne0` values is stored for `spec`: its blocks, its fallback's, or F16 (under
/// the UNet rules, `comfy`, F16 whenever the scheme's blocks do not divide it, as
/// ComfyUI-GGUF's patched llama-quantize falls back; for stable-diffusion.cpp too).
pub(super) fn row_storage(
    spec: QuantSpec,
    ne0: usize,
    comfy: bool,
) -> Result<(Storage, GgmlType, Option<String>)> {
    let wanted = gguf_type_of(spec.scheme)?;
    match spec.for_gguf_row(ne0).filter(|s| !comfy || *s == spec) {
        Some(s) => {
            let id = s.scheme.ggml_type().ok_or_else(|| {
                exec_datafusion_err!("the GGUF fallback of '{}' has no GGUF type", spec.scheme)
            })?;
            let ty = type_of_id(id, s.scheme)?;
            let why = (s != spec).then(|| {
                format!(
                    "rows of {ne0} values are not whole {} blocks: {}",
                    wanted.name, ty.name
                )
            });
            Ok((Storage::Blocks(s), ty, why))
        }
        None => Ok((
            Storage::F16,
            GgmlType::from_name("F16").expect("F16 is a ggml type"),
            Some(if comfy {
                format!(
                    "rows of {ne0} values are not whole {} blocks: F16, the UNet runtimes' fallback",
                    wanted.name
                )
            } else {
                format!(
                    "rows of {ne0} values fit no {} block nor its fallback: F16",
                    wanted.name
                )
            }),
        )),
    }
}

/// A tensor stored as it is, or an error when GGUF has no type for its dtype.
pub(super) fn as_stored(t: &InputTensor, reason: String) -> Result<Planned> {
    let Some(ty) = t.stored else {
        return Err(DataFusionError::Plan(format!(
            "tensor '{}': dtype {} has no GGUF type ({reason})",
            t.name, t.dtype
        )));
    };
    // A checkpoint's 1-D float tensors become F32, as llama.cpp's converter stores them.
    if t.from_checkpoint && t.float && ggml_dims(&t.dims) < 2 && ty.name != "F32" {
        let f32 = GgmlType::from_name("F32").expect("F32 is a ggml type");
        return Ok(Planned::keep(
            f32,
            Storage::F32,
            format!("{reason}; widened to F32"),
        ));
    }
    Ok(Planned::keep(ty, Storage::AsStored, reason))
}

/// A float tensor of a UNet left unquantized, in the type ComfyUI-GGUF's converter writes it
/// in ([`diffusion::kept_type`]).
fn comfy_kept(t: &InputTensor, reason: String) -> Result<Planned> {
    if !t.float || t.block {
        return as_stored(t, reason);
    }
    let name = diffusion::kept_type(&t.dtype, &t.shape);
    let ty = GgmlType::from_name(name).expect("F32, F16 and BF16 are ggml types");
    let storage = match name {
        _ if name == t.dtype => Storage::AsStored,
        "F32" => Storage::F32,
        "F16" => Storage::F16,
        _ => return as_stored(t, reason),
    };
    Ok(Planned::keep(
        ty,
        storage,
        format!("{reason}; {name} as ComfyUI-GGUF's converter writes it"),
    ))
}

/// The rules a UNet's tensors take beyond llama.cpp's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UnetRules {
    None,
    /// ComfyUI-GGUF's: reshaped rows, its keep list and kept types.
    ComfyUi,
    /// stable-diffusion.cpp's: original shapes, its converter's keep list.
    SdCpp,
}

fn plan_tensor(
    t: &InputTensor,
    name: &str,
    spec: QuantSpec,
    sensitive: Option<QuantSpec>,
    pure: bool,
    modality: Modality,
    rules: UnetRules,
) -> Result<Planned> {
    if t.shape.contains(&0) {
        return Err(DataFusionError::Plan(format!(
            "tensor '{}' (shape {:?}) is empty, which a GGUF file cannot hold",
            t.name, t.shape
        )));
    }
    if rules == UnetRules::SdCpp {
        // Rows the scheme's blocks do not divide in F16, as for ComfyUI-GGUF.
        return match kept_by_llama_cpp(name, &t.dims).or_else(|| sd_cpp::kept(name, &t.dims)) {
            Some(why) => as_stored(t, why),
            None => plan_quantized(t, name, spec, sensitive, pure, modality, t.dims[0], true),
        };
    }
    if rules == UnetRules::ComfyUi {
        let reshaped = diffusion::reshaped(&t.shape);
        let dims = reshaped.map_or_else(|| t.dims.clone(), |s| row_major_dims(&s));
        let kept = kept_by_llama_cpp(name, &dims).or_else(|| diffusion::kept(name, &dims));
        let mut p = match kept {
            Some(why) => comfy_kept(t, why)?,
            None => plan_quantized(t, name, spec, sensitive, pure, modality, dims[0], true)?,
        };
        if let Some(s) = reshaped {
            p.reason = format!("{}; reshaped to {s:?} (comfy.gguf.orig_shape)", p.reason);
            p.reshaped = reshaped;
        }
        return Ok(p);
    }
    if let Some(why) = kept_by_llama_cpp(name, &t.dims) {
        return as_stored(t, why);
    }
    plan_quantized(t, name, spec, sensitive, pure, modality, t.dims[0], false)
}

/// A tensor llama.cpp quantizes, its rows `ne0` values in the file.
#[allow(clippy::too_many_arguments)]
fn plan_quantized(
    t: &InputTensor,
    name: &str,
    spec: QuantSpec,
    sensitive: Option<QuantSpec>,
    pure: bool,
    modality: Modality,
    ne0: u64,
    comfy: bool,
) -> Result<Planned> {
    if t.block {
        return as_stored(t, format!("already {}: not requantized", t.dtype));
    }
    if !t.float {
        return as_stored(t, "not a float tensor".into());
    }
    let mut setting = spec;
    let mut reason = "weight".to_string();
    if !pure {
        let why = gguf_sensitivity(name).or_else(|| sensitivity(&t.name, modality));
        if let (Some(why), Some(wide)) = (why, sensitive) {
            reason = format!("{why}: {}", wide.scheme);
            setting = wide;
        }
    }
    let (storage, ty, why) = row_storage(setting, ne0 as usize, comfy)?;
    if let Some(why) = why {
        reason = format!("{reason}; {why}");
    }
    Ok(Planned {
        ggml_type: ty,
        storage,
        reason,
        fallback_from: None,
        selected: true,
        sums: None,
        reshaped: None,
    })
}

/// The spec of a GGUF scheme at its own width and block; the error says why not.
pub(super) fn block_spec(scheme: Scheme) -> std::result::Result<QuantSpec, String> {
    let format = scheme.gguf().ok_or_else(|| {
        format!(
            "scheme '{scheme}' has no GGUF type: GGUF output takes {}",
            gguf_scheme_names().join(", ")
        )
    })?;
    QuantSpec::new(i64::from(format.bits()), None, scheme)
        .map_err(|e| format!("scheme '{scheme}': {e}"))
}

/// The spec of ordinary tensors, refused when its scheme has no GGUF type.
fn gguf_spec(config: &QuantConfig, recipe: Option<Recipe>) -> Result<QuantSpec> {
    // A recipe's base type (its rules then give each tensor its own), or under allocation
    // q8_0 when the scheme is not a GGUF one: it only says which tensors are quantized at all.
    let base = match recipe {
        Some(recipe) => Some(Scheme::from_ggml_type(recipe.base_type().id).unwrap_or(Scheme::Q8_0)),
        None if config.allocating() && config.scheme.gguf().is_none() => Some(Scheme::Q8_0),
        None => None,
    };
    if let Some(scheme) = base {
        return block_spec(scheme).map_err(DataFusionError::Plan);
    }
    gguf_type_of(config.scheme)?;
    config
        .spec()
        .map_err(|e| DataFusionError::Plan(e.to_string()))
}

/// Quantizes a model into one GGUF file at `options.output`.
pub async fn quantize_to_gguf(
    options: &RunOptions,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<RunSummary> {
    let started = Instant::now();
    let config = &options.config;
    let recipe = config
        .recipe
        .as_deref()
        .map(Recipe::parse)
        .transpose()
        .map_err(|e| DataFusionError::Plan(format!("recipe: {e}")))?;
    let spec = gguf_spec(config, recipe)?;
    if config.calibration.is_some() {
        return Err(DataFusionError::Plan(
            "calibration: activation parameters are written as activation_params.parquet, \
             which a GGUF output cannot hold; use --format parquet"
                .into(),
        ));
    }
    let source = Source::open(&options.model)?;
    let layout = source.layout(config.gguf_target)?;
    let mut inputs = source.inputs(&options.model);
    for path in layout.iter().flat_map(|l| &l.read) {
        inputs.add(path, "model");
    }
    let out = PartialFile::create(&options.output, &inputs, options.force)?;
    let mut modality = source.detection();
    // The tensors written, each with its name in the file.
    let (tensors, names): (Vec<InputTensor>, Vec<String>) = match &layout {
        Some(layout) => {
            modality.evidence = format!("{}; {}", modality.evidence, layout.note);
            if !layout.dropped.is_empty() {
                let dropped: Vec<String> = layout
                    .dropped
                    .iter()
                    .map(|(n, why)| format!("{n} ({why})"))
                    .collect();
                modality.evidence =
                    format!("{}; left out: {}", modality.evidence, dropped.join(", "));
            }
            source
                .tensors()
                .into_iter()
                .zip(&layout.names)
                .filter_map(|(t, n)| Some((t, n.clone()?)))
                .unzip()
        }
        None => {
            let tensors = source.tensors();
            let names = tensors.iter().map(|t| t.name.clone()).collect();
            (tensors, names)
        }
    };
    let allocating = config.allocating();
    let sensitive = if !config.pure
        && !allocating
        && recipe.is_none()
        && config.sensitive_bit_width > spec.bits
    {
        Some(
            spec.at_width(config.sensitive_bit_width)
                .map_err(|e| DataFusionError::Plan(format!("sensitive_bit_width: {e}")))?,
        )
    } else {
        None
    };
    let unet = layout
        .as_ref()
        .is_some_and(|l| diffusion::is_comfy_unet(&l.architecture));
    let rules = match (unet, config.gguf_target) {
        (false, _) => UnetRules::None,
        (true, GgufTarget::ComfyUi) => UnetRules::ComfyUi,
        (true, GgufTarget::SdCpp) => UnetRules::SdCpp,
    };
    let mut plans = tensors
        .iter()
        .zip(&names)
        .map(|(t, n)| plan_tensor(t, n, spec, sensitive, config.pure, modality.modality, rules))
        .collect::<Result<Vec<_>>>()?;
    let comfy = rules != UnetRules::None;
    if !plans
        .iter()
        .any(|p| matches!(p.storage, Storage::Blocks(_)))
    {
        return Err(DataFusionError::Plan(format!(
            "{}: nothing to quantize: none of its {} tensors is one llama.cpp quantizes in {}",
            options.model.display(),
            tensors.len(),
            spec.scheme
        )));
    }

    let orders = layout
        .as_ref()
        .map(|l| l.reordered.clone())
        .unwrap_or_default();
    for (t, p) in tensors.iter().zip(plans.iter_mut()) {
        if let Some(o) = orders.get(&t.name) {
            p.reason = format!("{}; {}", p.reason, o.describe());
        }
    }

    let ctx = crate::session::pipeline_context();
    let imatrix = config
        .imatrix
        .as_ref()
        .map(|path| importance_of(Path::new(path), &tensors, &names, &plans, rules))
        .transpose()?;
    let (importance, importance_warnings, imatrix_provenance) = match imatrix {
        Some(m) => (m.importance, m.warnings, Some(m.provenance)),
        None => Default::default(),
    };
    let reader = TensorReader {
        ctx: &ctx,
        function: source.table_function(),
        path: sql_string(&options.model.display().to_string()),
        orders,
        importance,
    };
    let (fixed, mut warnings) = apply_overrides(config, &tensors, &names, &mut plans)?;
    warnings.extend(importance_warnings);
    let carried = source.metadata(layout.as_ref())?;
    let mut fallbacks = 0;
    let mut allocation = None;
    if let Some(recipe) = recipe {
        // As llama-quantize: the rules' types, no quality fallback.
        let imatrix = config.imatrix.is_some();
        apply_recipe(
            recipe, &carried, &tensors, &names, &mut plans, &fixed, comfy, imatrix,
        )?;
    } else if allocating {
        allocation = Some(
            allocate(
                &reader,
                &tensors,
                &names,
                &mut plans,
                &fixed,
                config,
                &super::gguf_recipe::model_params(&carried).0,
                comfy,
                progress,
            )
            .await?,
        );
    } else if !config.pure {
        fallbacks = measure(
            &reader, &tensors, &mut plans, &fixed, config, comfy, progress,
        )
        .await?;
    }

    // The file's type: the scheme's, or under allocation the type most values took.
    let base = if let Some(recipe) = recipe {
        recipe.base_type()
    } else if allocating {
        let mut by_type: Vec<(GgmlType, u64)> = Vec::new();
        for (t, p) in tensors.iter().zip(&plans) {
            if !matches!(p.storage, Storage::Blocks(_)) {
                continue;
            }
            let values: u64 = t.shape.iter().map(|&d| d as u64).product();
            match by_type.iter_mut().find(|(ty, _)| *ty == p.ggml_type) {
                Some((_, n)) => *n += values,
                None => by_type.push((p.ggml_type, values)),
            }
        }
        by_type
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map_or(gguf_type_of(spec.scheme)?, |(ty, _)| ty)
    } else {
        gguf_type_of(spec.scheme)?
    };
    let file_type = recipe
        .map(Recipe::llama_ftype)
        .or_else(|| llama_ftype(base));
    let file_type = file_type.ok_or_else(|| {
        DataFusionError::Plan(format!(
            "GGUF type {} has no llama.cpp file type",
            base.name
        ))
    })?;
    let mixture = names
        .iter()
        .zip(&plans)
        .filter(|(_, p)| p.selected && p.ggml_type != base)
        .map(|(n, p)| format!("{n}={}: {}", p.ggml_type.name, p.reason))
        .collect();
    let mut metadata = finish_metadata(
        carried,
        file_type,
        Provenance {
            scheme: recipe.map_or_else(|| spec.scheme.to_string(), |r| r.to_string()),
            pure: config.pure,
            mixture,
            imatrix: imatrix_provenance,
        },
    );
    for ((t, p), name) in tensors.iter().zip(&plans).zip(&names) {
        if p.reshaped.is_some() {
            metadata.push(diffusion::orig_shape(name, &t.shape)?);
        }
    }
    let infos: Vec<TensorInfo> = tensors
        .iter()
        .zip(&plans)
        .zip(&names)
        .map(|((t, p), name)| TensorInfo {
            name: name.clone(),
            ggml_type: p.ggml_type,
            dims: p.dims(t),
        })
        .collect();
    let shown = options.output.display().to_string();
    let io_error = |e: std::io::Error| DataFusionError::Execution(format!("{shown}: {e}"));
    let buffered = BufWriter::with_capacity(1 << 20, out.file());
    let mut writer = GgufWriter::new(buffered, &metadata, &infos).map_err(io_error)?;
    progress(Progress::Start {
        phase: "writing".into(),
        bytes: tensors.iter().map(|t| t.bytes).sum(),
    });
    for ((t, p), name) in tensors.iter().zip(plans.iter_mut()).zip(&names) {
        let read = reader.read_planned(t, p, true).await?;
        if let Some(r) = read.refused {
            let hint = if r.beyond_f16 && config.pure {
                " (without --pure, such a tensor is kept as it is)"
            } else {
                ""
            };
            return Err(exec_datafusion_err!(
                "tensor '{}' row {}: {}{hint}",
                t.name,
                r.row,
                r.reason
            ));
        }
        if matches!(p.storage, Storage::Blocks(_)) && p.sums.is_none() {
            p.sums = Some(read.sums);
        }
        writer
            .write_tensor_bytes(name, &read.data)
            .map_err(io_error)?;
        progress(Progress::Advance { bytes: t.bytes });
    }
    let mut buffered = writer.finish().map_err(io_error)?;
    buffered.flush().map_err(io_error)?;
    drop(buffered);
    out.commit()?;
    Ok(RunSummary {
        allocation,
        warnings,
        ..summarize(
            &tensors,
            &plans,
            &options.output,
            modality,
            fallbacks,
            started,
        )
    })
}

/// The measuring pass: each quantized tensor's error sums at its setting, redone wider while
/// under the threshold (with `fallback`), kept as stored when beyond f16 range. Returns how
/// many tensors were redone.
async fn measure(
    reader: &TensorReader<'_>,
    tensors: &[InputTensor],
    plans: &mut [Planned],
    fixed: &[bool],
    config: &QuantConfig,
    comfy: bool,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<usize> {
    progress(Progress::Start {
        phase: "measuring".into(),
        bytes: tensors
            .iter()
            .zip(plans.iter())
            .filter(|(_, p)| matches!(p.storage, Storage::Blocks(_)))
            .map(|(t, _)| t.bytes)
            .sum(),
    });
    let mut redone = 0;
    for ((t, p), &is_fixed) in tensors.iter().zip(plans.iter_mut()).zip(fixed) {
        let mut counted = false;
        while let Storage::Blocks(spec) = p.storage {
            let read = reader.read_planned(t, p, false).await?;
            if let Some(r) = read.refused {
                if !r.beyond_f16 {
                    return Err(exec_datafusion_err!(
                        "tensor '{}' row {}: {}",
                        t.name,
                        r.row,
                        r.reason
                    ));
                }
                let reason = format!("values beyond f16 range (row {}: {})", r.row, r.reason);
                let (selected, reshaped) = (p.selected, p.reshaped);
                *p = as_stored(t, reason)?;
                (p.selected, p.reshaped) = (selected, reshaped);
                break;
            }
            let short = read.sums.cosine().is_none_or(|c| c < config.min_cosine);
            // An override is what the user asked for: measured, never redone.
            if !(short && config.fallback) || is_fixed {
                p.sums = Some(read.sums);
                break;
            }
            if !counted {
                redone += 1;
                counted = true;
            }
            p.fallback_from.get_or_insert_with(|| spec.to_string());
            match spec.wider() {
                None => {
                    let reason = format!("{}; kept: quality short at every width", p.reason);
                    let (selected, from, reshaped) =
                        (p.selected, p.fallback_from.take(), p.reshaped);
                    *p = as_stored(t, reason)?;
                    (p.selected, p.fallback_from, p.reshaped) = (selected, from, reshaped);
                }
                Some(wide) => {
                    let ne0 = p.dims(t)[0] as usize;
                    let (storage, ty, why) = row_storage(wide, ne0, comfy)?;
                    p.storage = storage;
                    p.ggml_type = ty;
                    p.reason = format!(
                        "cosine {:.6} under {}: {}{}",
                        read.sums.cosine().unwrap_or(f64::NAN),
                        config.min_cosine,
                        wide.scheme,
                        why.map(|w| format!("; {w}")).unwrap_or_default()
                    );
                }
            }
        }
        if matches!(p.storage, Storage::Blocks(_)) || p.fallback_from.is_some() {
            progress(Progress::Advance { bytes: t.bytes });
        }
    }
    Ok(redone)
}

/// A refused row: the first one of its tensor.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) row: i64,
    pub(super) reason: String,
    pub(super) beyond_f16: bool,
}

/// One tensor read through the session: its bytes in the output's type (when asked for), and
/// for quantized tensors the error sums of every row.
pub(super) struct TensorBytes {
    pub(super) data: Vec<u8>,
    pub(super) sums: PairSums,
    /// Σ importance·(w − ŵ)² of the rows, for a tensor with importance.
    pub(super) weighted: Option<f64>,
    pub(super) refused: Option<Refusal>,
}

/// Reads tensors of the source with its table function, one query per tensor.
pub(super) struct TensorReader<'a> {
    pub(super) ctx: &'a SessionContext,
    function: &'static str,
    /// The source path as a SQL literal.
    path: String,
    /// Tensors (by input name) whose rows the output holds in another order.
    orders: HashMap<String, RowOrder>,
    /// Per-column importance (by input name) of the tensors an importance matrix covers.
    pub(super) importance: super::gguf_importance::Importance,
}

/// The one-row table a tensor's importance is joined from while its query runs.
const IMPORTANCE: &str = "arrowquant_importance";

/// The call that quantizes and measures a row of `weights` in `spec`, with the joined
/// importance (`i.importance`) when there is one.
fn measured_call(spec: QuantSpec, importance: bool) -> String {
    format!(
        "quantize_measured(weights, {}, {}, {}{})",
        spec.bits,
        group_literal(spec.group),
        sql_string(spec.scheme.name()),
        if importance { ", i.importance" } else { "" }
    )
}

/// A tensor's importance as the one row of the [`IMPORTANCE`] table.
fn importance_batch(importance: &[f32]) -> Result<RecordBatch> {
    let item = Arc::new(Field::new_list_field(DataType::Float32, true));
    let list = ListArray::try_new(
        item,
        OffsetBuffer::from_lengths([importance.len()]),
        Arc::new(Float32Array::from(importance.to_vec())),
        None,
    )?;
    Ok(RecordBatch::try_from_iter([(
        "importance",
        Arc::new(list) as ArrayRef,
    )])?)
}

/// The in-memory table a reshaped tensor's rows are quantized from.
const REGROUPED: &str = "arrowquant_regrouped_rows";

impl TensorReader<'_> {
    /// `FROM` the source, for one tensor.
    fn source_rows(&self, t: &InputTensor) -> String {
        format!(
            "{}({}) WHERE layer = {}",
            self.function,
            self.path,
            sql_string(&t.name)
        )
    }

    /// The `row` column of `t`'s rows in the output: the source's, or moved by its row order.
    fn row_column(&self, t: &InputTensor) -> String {
        self.orders
            .get(&t.name)
            .map_or_else(|| "row".into(), |o| o.sql("row"))
    }

    /// The query of one tensor's rows `FROM from`, its row numbers `row` (an expression of the
    /// source's `row`): the rows of the output, before they are quantized.
    /// With `importance`, each row is joined to the tensor's importance (the table
    /// [`IMPORTANCE`]), which steers the search and weighs the error.
    fn sql(&self, from: &str, row: &str, storage: Storage, importance: bool) -> String {
        let columns = match storage {
            Storage::Blocks(s) => format!("{} AS m", measured_call(s, importance)),
            Storage::F16 | Storage::F32 => "weights".into(),
            Storage::AsStored => "data".into(),
        };
        let from = if importance {
            format!("(SELECT * FROM {from}) AS w CROSS JOIN {IMPORTANCE} AS i")
        } else {
            from.to_string()
        };
        let inner = format!("SELECT {row} AS row, {columns} FROM {from}");
        match storage {
            Storage::Blocks(_) => format!(
                "SELECT row, m['quantized']['codes'] AS bytes, m['error_sums'] AS e, \
                 m['weighted_err_sq'] AS we, m['refused'] AS refused FROM ({inner})"
            ),
            _ => inner,
        }
    }

    /// Runs the query of `t`'s rows `FROM from` (the source's), with its importance when it
    /// has one and is quantized.
    async fn query(
        &self,
        t: &InputTensor,
        from: &str,
        ty: GgmlType,
        storage: Storage,
        keep: bool,
    ) -> Result<TensorBytes> {
        let importance = match storage {
            Storage::Blocks(_) => self.importance.get(&t.name),
            _ => None,
        };
        let Some(importance) = importance else {
            let sql = self.sql(from, &self.row_column(t), storage, false);
            return self.run(&sql, t, ty, storage, keep).await;
        };
        self.ctx
            .register_batch(IMPORTANCE, importance_batch(importance)?)?;
        let sql = self.sql(from, &self.row_column(t), storage, true);
        let read = self.run(&sql, t, ty, storage, keep).await;
        self.ctx.deregister_table(IMPORTANCE)?;
        read
    }

    /// Reads `t` as `p` plans it; with `keep`, its bytes too. A reshaped tensor is quantized
    /// in its rows in the file; stored in a float type, its bytes are the same either way.
    pub(super) async fn read_planned(
        &self,
        t: &InputTensor,
        p: &Planned,
        keep: bool,
    ) -> Result<TensorBytes> {
        match (p.reshaped, p.storage) {
            (Some(shape), Storage::Blocks(_)) => {
                self.read_regrouped(t, shape, p.ggml_type, p.storage, keep)
                    .await
            }
            _ => self.read(t, p.ggml_type, p.storage, keep).await,
        }
    }

    /// The error sums of every `stride`-th row of `t` as `p` plans it (all rows of a reshaped
    /// tensor, whose rows in the file are not the source's): a sample for an error estimate.
    pub(super) async fn measure_every(
        &self,
        t: &InputTensor,
        p: &Planned,
        stride: usize,
    ) -> Result<TensorBytes> {
        if stride <= 1 || p.reshaped.is_some() {
            return self.read_planned(t, p, false).await;
        }
        let from = format!("{} AND row % {stride} = 0", self.source_rows(t));
        self.query(t, &from, p.ggml_type, p.storage, false).await
    }

    /// The error sums of every `stride`-th row of `t` in each of `storages` (block formats),
    /// from one query that reads the rows once and quantizes them in each format; a reshaped
    /// tensor is measured one format at a time, on all its rows, as [`measure_every`] does.
    ///
    /// [`measure_every`]: Self::measure_every
    pub(super) async fn measure_each(
        &self,
        t: &InputTensor,
        trials: &[Planned],
        stride: usize,
    ) -> Result<Vec<TensorBytes>> {
        if trials.len() < 2 || trials.iter().any(|p| p.reshaped.is_some()) {
            let mut out = Vec::with_capacity(trials.len());
            for p in trials {
                out.push(self.measure_every(t, p, stride).await?);
            }
            return Ok(out);
        }
        let mut from = self.source_rows(t);
        if stride > 1 {
            from = format!("{from} AND row % {stride} = 0");
        }
        let importance = self.importance.get(&t.name);
        if importance.is_some() {
            from = format!("(SELECT * FROM {from}) AS w CROSS JOIN {IMPORTANCE} AS i");
        }
        let mut calls = Vec::with_capacity(trials.len());
        let mut fields = Vec::with_capacity(trials.len());
        for (k, p) in trials.iter().enumerate() {
            let Storage::Blocks(s) = p.storage else {
                return Err(exec_datafusion_err!("only block formats are measured"));
            };
            calls.push(format!(
                "{} AS m{k}",
                measured_call(s, importance.is_some())
            ));
            fields.push(format!(
                "m{k}['error_sums'] AS e{k}, m{k}['weighted_err_sq'] AS we{k}, m{k}['refused'] AS r{k}"
            ));
        }
        let sql = format!(
            "SELECT row, {} FROM (SELECT {} AS row, {} FROM {from})",
            fields.join(", "),
            self.row_column(t),
            calls.join(", ")
        );
        if let Some(importance) = importance {
            self.ctx
                .register_batch(IMPORTANCE, importance_batch(importance)?)?;
        }
        let measured = self.collect_each(&sql, trials.len()).await;
        if importance.is_some() {
            self.ctx.deregister_table(IMPORTANCE)?;
        }
        measured
    }

    /// Runs [`measure_each`](Self::measure_each)'s query: per format, the sums, the weighted
    /// error and the first refused row.
    async fn collect_each(&self, sql: &str, formats: usize) -> Result<Vec<TensorBytes>> {
        let mut out: Vec<TensorBytes> = (0..formats)
            .map(|_| TensorBytes {
                data: Vec::new(),
                sums: PairSums::default(),
                weighted: None,
                refused: None,
            })
            .collect();
        let mut stream = self.ctx.sql(sql).await?.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let rows = column(&batch, "row")?.as_primitive::<Int64Type>().clone();
            for (k, o) in out.iter_mut().enumerate() {
                // The columns of format k under the names collect_sums reads.
                let one = RecordBatch::try_from_iter([
                    ("e", column(&batch, &format!("e{k}"))?.clone()),
                    ("refused", column(&batch, &format!("r{k}"))?.clone()),
                ])?;
                collect_sums(&one, &rows, &mut o.sums, &mut o.refused)?;
                let we = column(&batch, &format!("we{k}"))?.as_primitive::<Float64Type>();
                for v in we.iter().flatten() {
                    *o.weighted.get_or_insert(0.0) += v;
                }
            }
        }
        Ok(out)
    }

    /// Reads `t` as `ty` by `storage`; with `keep`, its bytes too.
    async fn read(
        &self,
        t: &InputTensor,
        ty: GgmlType,
        storage: Storage,
        keep: bool,
    ) -> Result<TensorBytes> {
        self.query(t, &self.source_rows(t), ty, storage, keep).await
    }

    /// Quantizes `t` in the rows of `shape` (row-major, the same values in the same order):
    /// its values read as F32, cut into those rows and queried from an in-memory table.
    async fn read_regrouped(
        &self,
        t: &InputTensor,
        shape: [usize; 2],
        ty: GgmlType,
        storage: Storage,
        keep: bool,
    ) -> Result<TensorBytes> {
        if self.orders.contains_key(&t.name) {
            return Err(exec_datafusion_err!(
                "tensor '{}': a reshaped tensor cannot have its rows reordered",
                t.name
            ));
        }
        let f32 = GgmlType::from_name("F32").expect("F32 is a ggml type");
        let bytes = self.read(t, f32, Storage::F32, true).await?.data;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        drop(bytes);
        let [rows, per_row] = shape;
        if values.len() != rows * per_row {
            return Err(exec_datafusion_err!(
                "tensor '{}': {} values, not the {rows} rows of {per_row} it is reshaped to",
                t.name,
                values.len()
            ));
        }
        let item = Arc::new(Field::new_list_field(DataType::Float32, true));
        let weights = ListArray::try_new(
            item,
            OffsetBuffer::from_lengths(std::iter::repeat_n(per_row, rows)),
            Arc::new(Float32Array::from(values)),
            None,
        )?;
        let row = Int64Array::from_iter_values(0..rows as i64);
        let batch = RecordBatch::try_from_iter([
            ("row", Arc::new(row) as ArrayRef),
            ("weights", Arc::new(weights) as ArrayRef),
        ])?;
        let out = InputTensor {
            shape: shape.to_vec(),
            dims: row_major_dims(&shape),
            ..t.clone()
        };
        self.ctx.register_batch(REGROUPED, batch)?;
        let read = self
            .run(
                &self.sql(REGROUPED, "row", storage, false),
                &out,
                ty,
                storage,
                keep,
            )
            .await;
        self.ctx.deregister_table(REGROUPED)?;
        read
    }

    /// Runs one tensor's query, its rows placed as `t`'s.
    async fn run(
        &self,
        sql: &str,
        t: &InputTensor,
        ty: GgmlType,
        storage: Storage,
        keep: bool,
    ) -> Result<TensorBytes> {
        let mut placed = keep.then(|| RowPlacer::new(t, ty)).transpose()?;
        let mut sums = PairSums::default();
        let mut weighted: Option<f64> = None;
        let mut refused: Option<Refusal> = None;
        let mut stream = self.ctx.sql(sql).await?.execute_stream().await?;
        let mut scratch = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let rows = column(&batch, "row")?.as_primitive::<Int64Type>().clone();
            match storage {
                Storage::Blocks(_) => {
                    collect_sums(&batch, &rows, &mut sums, &mut refused)?;
                    let we = column(&batch, "we")?.as_primitive::<Float64Type>();
                    for v in we.iter().flatten() {
                        *weighted.get_or_insert(0.0) += v;
                    }
                    if let Some(placed) = placed.as_mut() {
                        let codes = column(&batch, "bytes")?.as_binary::<i32>();
                        for i in (0..batch.num_rows()).filter(|&i| codes.is_valid(i)) {
                            placed.put(rows.value(i), codes.value(i))?;
                        }
                    }
                }
                Storage::AsStored => {
                    let Some(placed) = placed.as_mut() else {
                        continue;
                    };
                    let data = column(&batch, "data")?.as_binary::<i32>();
                    for i in 0..batch.num_rows() {
                        placed.put(rows.value(i), data.value(i))?;
                    }
                }
                Storage::F16 | Storage::F32 => {
                    let Some(placed) = placed.as_mut() else {
                        continue;
                    };
                    let weights = column(&batch, "weights")?.as_list::<i32>();
                    for i in 0..batch.num_rows() {
                        let values = weights.value(i);
                        let values = values.as_primitive::<Float32Type>().values();
                        scratch.clear();
                        if storage == Storage::F16 {
                            scratch.extend(
                                values
                                    .iter()
                                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
                            );
                        } else {
                            scratch.extend(values.iter().flat_map(|v| v.to_le_bytes()));
                        }
                        placed.put(rows.value(i), &scratch)?;
                    }
                }
            }
        }
        let data = match placed {
            Some(placed) if refused.is_none() => placed.finish()?,
            _ => Vec::new(),
        };
        Ok(TensorBytes {
            data,
            sums,
            weighted,
            refused,
        })
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| exec_datafusion_err!("the tensor query has no column '{name}'"))
}

/// Adds a batch's error sums, and notes its first refused row.
fn collect_sums(
    batch: &RecordBatch,
    rows: &Int64Array,
    sums: &mut PairSums,
    refused: &mut Option<Refusal>,
) -> Result<()> {
    let e = column(batch, "e")?.as_struct();
    let field = |name: &str| {
        e.column_by_name(name)
            .ok_or_else(|| exec_datafusion_err!("error sums without '{name}'"))
    };
    let n = field("n")?.as_primitive::<Int64Type>();
    let [dot, aa, bb, err, max] = ["dot", "a_sq", "b_sq", "err_sq", "max_abs_error"].map(field);
    let (dot, aa, bb, err, max) = (
        dot?.as_primitive::<Float64Type>(),
        aa?.as_primitive::<Float64Type>(),
        bb?.as_primitive::<Float64Type>(),
        err?.as_primitive::<Float64Type>(),
        max?.as_primitive::<Float64Type>(),
    );
    for i in (0..batch.num_rows()).filter(|&i| e.is_valid(i)) {
        sums.merge(&PairSums {
            n: n.value(i).max(0) as usize,
            dot: dot.value(i),
            aa: aa.value(i),
            bb: bb.value(i),
            sq_err: err.value(i),
            max_abs_err: max.value(i),
        });
    }
    let r = column(batch, "refused")?.as_struct();
    if r.null_count() == r.len() {
        return Ok(());
    }
    let reason = r
        .column_by_name("reason")
        .ok_or_else(|| exec_datafusion_err!("a refusal without 'reason'"))?
        .as_string::<i32>();
    let beyond = r
        .column_by_name("beyond_f16")
        .ok_or_else(|| exec_datafusion_err!("a refusal without 'beyond_f16'"))?
        .as_boolean();
    for i in (0..batch.num_rows()).filter(|&i| r.is_valid(i)) {
        let row = rows.value(i);
        if refused.as_ref().is_none_or(|f| row < f.row) {
            *refused = Some(Refusal {
                row,
                reason: reason.value(i).to_string(),
                beyond_f16: beyond.value(i),
            });
        }
    }
    Ok(())
}

/// A tensor's bytes assembled from rows arriving in any order: each row at the offset its row
/// number gives, each exactly once, each of the length its values take in the output type.
pub(super) struct RowPlacer<'a> {
    tensor: &'a InputTensor,
    ty: GgmlType,
    bytes: Vec<u8>,
    seen: Vec<bool>,
    /// Values per row (all rows but a long 1-D tensor's last chunk).
    per_row: usize,
}

impl<'a> RowPlacer<'a> {
    pub(super) fn new(tensor: &'a InputTensor, ty: GgmlType) -> Result<Self> {
        let (rows, per_row) = row_layout(&tensor.shape);
        let elements: usize = tensor.shape.iter().product();
        let size = ty.bytes_of(elements as u64).ok_or_else(|| {
            exec_datafusion_err!(
                "tensor '{}': {elements} values are not whole {} blocks",
                tensor.name,
                ty.name
            )
        })?;
        // Sized by the input's header, which its file's length bounds; refused, not aborted,
        // when memory is short.
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(size as usize).map_err(|_| {
            exec_datafusion_err!(
                "tensor '{}': cannot hold its {size} bytes in memory",
                tensor.name
            )
        })?;
        bytes.resize(size as usize, 0);
        Ok(RowPlacer {
            tensor,
            ty,
            bytes,
            seen: vec![false; rows],
            per_row,
        })
    }

    pub(super) fn put(&mut self, row: i64, data: &[u8]) -> Result<()> {
        let name = &self.tensor.name;
        let r = usize::try_from(row)
            .ok()
            .filter(|&r| r < self.seen.len())
            .ok_or_else(|| {
                exec_datafusion_err!(
                    "tensor '{name}': row {row} is outside its {} rows",
                    self.seen.len()
                )
            })?;
        if std::mem::replace(&mut self.seen[r], true) {
            return Err(exec_datafusion_err!(
                "tensor '{name}': row {row} came twice"
            ));
        }
        let values = row_values(&self.tensor.shape, r);
        let want = self.ty.bytes_of(values as u64);
        let start = self.ty.bytes_of((r * self.per_row) as u64);
        match (want, start) {
            (Some(want), Some(start)) if want == data.len() as u64 => {
                let start = start as usize;
                self.bytes[start..start + data.len()].copy_from_slice(data);
                Ok(())
            }
            _ => Err(exec_datafusion_err!(
                "tensor '{name}' row {row}: {} bytes, but {values} values of {} take {want:?}",
                data.len(),
                self.ty.name
            )),
        }
    }

    pub(super) fn finish(self) -> Result<Vec<u8>> {
        if let Some(r) = self.seen.iter().position(|s| !s) {
            return Err(exec_datafusion_err!(
                "tensor '{}': row {r} was never read",
                self.tensor.name
            ));
        }
        Ok(self.bytes)
    }
}

/// The run's summary, with one report row per tensor.
fn summarize(
    tensors: &[InputTensor],
    plans: &[Planned],
    output: &Path,
    modality: Detection,
    fallbacks: usize,
    started: Instant,
) -> RunSummary {
    let after = |t: &InputTensor, p: &Planned| {
        let elements: usize = t.shape.iter().product();
        p.ggml_type.bytes_of(elements as u64).unwrap_or(0)
    };
    let action = |p: &Planned| match p.storage {
        Storage::Blocks(_) => "quantize",
        Storage::F16 | Storage::F32 => "convert",
        Storage::AsStored => "keep",
    };
    let spec = |p: &Planned| match p.storage {
        Storage::Blocks(s) => Some(s),
        _ => None,
    };
    let cosines: Vec<Option<f64>> = plans
        .iter()
        .map(|p| match p.storage {
            Storage::Blocks(_) => p.sums.as_ref().and_then(PairSums::cosine),
            _ => Some(1.0),
        })
        .collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "layer",
            Arc::new(StringArray::from_iter_values(
                tensors.iter().map(|t| t.name.as_str()),
            )),
        ),
        (
            "shape",
            Arc::new(StringArray::from_iter_values(
                tensors.iter().map(|t| format!("{:?}", t.shape)),
            )),
        ),
        (
            "dtype",
            Arc::new(StringArray::from_iter_values(
                tensors.iter().map(|t| t.dtype.as_str()),
            )),
        ),
        (
            "action",
            Arc::new(StringArray::from_iter_values(plans.iter().map(action))),
        ),
        (
            "ggml_type",
            Arc::new(StringArray::from_iter_values(
                plans.iter().map(|p| p.ggml_type.name),
            )),
        ),
        (
            "bits",
            Arc::new(UInt8Array::from_iter(
                plans.iter().map(|p| spec(p).map(|s| s.bits)),
            )),
        ),
        (
            "group_size",
            Arc::new(StringArray::from_iter(
                plans.iter().map(|p| spec(p).map(|s| s.group.to_string())),
            )),
        ),
        (
            "scheme",
            Arc::new(StringArray::from_iter(
                plans.iter().map(|p| spec(p).map(|s| s.scheme.to_string())),
            )),
        ),
        (
            "reason",
            Arc::new(StringArray::from_iter_values(
                plans.iter().map(|p| p.reason.as_str()),
            )),
        ),
        (
            "fallback_from",
            Arc::new(StringArray::from_iter(
                plans.iter().map(|p| p.fallback_from.as_deref()),
            )),
        ),
        ("cosine", Arc::new(Float64Array::from(cosines.clone()))),
        (
            "sqnr_db",
            Arc::new(Float64Array::from_iter(plans.iter().map(
                |p| match p.storage {
                    Storage::Blocks(_) => p.sums.as_ref().and_then(PairSums::sqnr_db),
                    _ => None,
                },
            ))),
        ),
        (
            "bytes_before",
            Arc::new(Int64Array::from_iter_values(
                tensors.iter().map(|t| t.bytes as i64),
            )),
        ),
        (
            "bytes_after",
            Arc::new(Int64Array::from_iter_values(
                tensors.iter().zip(plans).map(|(t, p)| after(t, p) as i64),
            )),
        ),
    ];
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
        .collect();
    let report = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, c)| c).collect(),
    )
    .expect("columns of one length");
    debug_assert!(matches!(
        report.schema().field(10).data_type(),
        DataType::Float64
    ));
    let quantized: Vec<f64> = plans
        .iter()
        .zip(&cosines)
        .filter(|(p, _)| matches!(p.storage, Storage::Blocks(_)))
        .map(|(_, c)| c.unwrap_or(0.0))
        .collect();
    let before: u64 = tensors.iter().map(|t| t.bytes).sum();
    let after_total: u64 = tensors.iter().zip(plans).map(|(t, p)| after(t, p)).sum();
    let seconds = started.elapsed().as_secs_f64();
    RunSummary {
        output: PathBuf::from(output),
        modality,
        tensors: tensors.len(),
        quantized: quantized.len(),
        kept: tensors.len() - quantized.len(),
        fallbacks,
        bytes_before: before,
        bytes_after: after_total,
        compression_ratio: before as f64 / after_total.max(1) as f64,
        min_cosine: quantized.iter().copied().fold(1.0, f64::min),
        mean_cosine: if quantized.is_empty() {
            1.0
        } else {
            quantized.iter().sum::<f64>() / quantized.len() as f64
        },
        seconds,
        mb_per_second: before as f64 / 1e6 / seconds.max(1e-9),
        activations: None,
        allocation: None,
        warnings: Vec::new(),
        report: vec![report],
    }
}
