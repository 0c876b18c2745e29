//! llama.cpp's importance-matrix files (written by `llama-imatrix`, read by `llama-quantize
//! --imatrix`): per weight tensor, the mean square of each input channel of its activations
//! over a calibration set, per expert for the merged expert tensors of MoE models.
//!
//! Two layouts, told apart by content (the GGUF magic or not), both little-endian:
//!
//! - **GGUF** (llama.cpp's default): a GGUF file with `general.type` = `imatrix` and, per
//!   weight tensor NAME, two F32 tensors: `NAME.in_sum2` (ne = [n_per_row, n_mat]: per matrix,
//!   the sum over the rows it saw of each channel's square) and `NAME.counts` (ne = [1, n_mat]:
//!   how many rows each matrix saw). The newest llama.cpp adds `NAME.in_sum` (the plain sums),
//!   checked here but not read; other tensors are ignored, as llama.cpp ignores them. Keys:
//!   `imatrix.datasets` (array of strings), `imatrix.chunk_count` and `imatrix.chunk_size`
//!   (UINT32). llama.cpp drops trailing dimensions of 1 (a dense tensor's pair is 1-D), gguf-py
//!   keeps them: both are read. Importance = in_sum2 / counts, per matrix. A matrix of count 0
//!   (an expert that no calibration token was routed to) must have zero sums and reads as
//!   importance 1 on every channel, as llama-quantize reads it.
//! - **Legacy `.dat`**: int32 n_entries; per entry int32 name length, the name, int32 ncall,
//!   int32 nval, nval float32 values; then optionally int32 chunks (how many chunks were
//!   processed) and int32 length + the dataset's name. llama-imatrix stores each value as
//!   (sum / count) × ncall, where ncall is the entry's chunk count (its largest count over
//!   matrices divided by the chunk size, rounded up), and llama-quantize reads value / ncall:
//!   so importance = value / ncall and count = ncall (chunks, not rows). An expert of count 0
//!   was stored as 1 × ncall, so it reads as importance 1 here too. The layout does not record
//!   the number of matrices: an entry of a merged-expert tensor (`blk.N.<name>_exps.weight`) is
//!   cut into the block's n_expert matrices, n_expert being the values of its
//!   `ffn_gate_exps` (or `ffn_up_exps`, `ffn_gate_up_exps`) entry over those of its router
//!   `ffn_gate_inp` (all three take the block's hidden state as input). Without a router entry
//!   it stays one matrix of nval channels: llama-quantize, too, takes it as one flat vector of
//!   n_per_row × n_expert values ([`ImatrixFile::flat_importance`]).
//!
//! Every count and length comes from the file and is checked against the bytes left before
//! anything is read or allocated; errors name the file, and the entry or tensor at fault.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::ModelError;
use super::gguf_file::{GgufTensor, MetadataEntry, ValueType, read_header, value_json};

/// Which of the two layouts a file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImatrixLayout {
    /// A GGUF file of `NAME.in_sum2` / `NAME.counts` tensors.
    Gguf,
    /// The legacy `.dat` layout.
    Legacy,
}

impl ImatrixLayout {
    /// `"gguf"` or `"legacy"`.
    pub fn name(self) -> &'static str {
        match self {
            ImatrixLayout::Gguf => "gguf",
            ImatrixLayout::Legacy => "legacy",
        }
    }
}

/// The statistics of one matrix of one weight tensor: the whole tensor for a dense one, one
/// expert of a merged-expert tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ImatrixEntry {
    /// The weight tensor's name as llama.cpp names it (`blk.0.attn_q.weight`).
    pub name: String,
    /// 0 for a dense tensor; the expert's index for a merged-expert tensor.
    pub matrix: u32,
    /// Input channels (n_per_row, the weight's innermost dimension ne[0]); at least 1, at most
    /// `u32::MAX`.
    pub channels: usize,
    /// What contributed: rows (tokens) in the GGUF layout, chunks (ncall) in the legacy one.
    /// A whole number ≥ 0; 0 only for an expert that saw no rows.
    pub count: f64,
    /// Per input channel, the mean square of the input (`channels` values, finite, ≥ 0; all 1
    /// when `count` is 0).
    pub importance: Vec<f32>,
}

/// An importance-matrix file, read whole.
#[derive(Debug, Clone)]
pub struct ImatrixFile {
    pub path: PathBuf,
    pub layout: ImatrixLayout,
    /// In file order; the matrices of a tensor are consecutive, in matrix order from 0.
    pub entries: Vec<ImatrixEntry>,
    /// Chunks processed (`imatrix.chunk_count`; the legacy layout's trailing count).
    pub chunk_count: Option<u64>,
    /// Tokens per chunk (`imatrix.chunk_size`; GGUF only).
    pub chunk_size: Option<u64>,
    /// The calibration data's names (`imatrix.datasets`; the legacy layout's one name).
    pub datasets: Vec<String>,
}

impl ImatrixFile {
    /// Maps and reads an imatrix file of either layout.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = super::input::open_regular(path)?;
        // SAFETY: the map is read-only and lives only while it is parsed (every value is copied
        // out). Like every reader of memory-mapped files, we rely on the file not being
        // truncated while it is read; input files are never written.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        Self::parse(path, &map)
    }

    /// Reads an imatrix file held in `bytes`; `path` only names it.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, ModelError> {
        if bytes.starts_with(b"GGUF") {
            parse_gguf(path, bytes)
        } else {
            parse_legacy(path, bytes)
        }
    }

    /// The matrices of one tensor, in matrix order; empty when the file has none.
    pub fn matrices(&self, name: &str) -> &[ImatrixEntry] {
        let Some(first) = self.entries.iter().position(|e| e.name == name) else {
            return &[];
        };
        let n = self.entries[first..]
            .iter()
            .take_while(|e| e.name == name)
            .count();
        &self.entries[first..first + n]
    }

    /// One tensor's importance as llama-quantize takes it: its matrices' vectors one after the
    /// other (n_per_row × n_expert values for a merged-expert tensor of ne[2] = n_expert).
    pub fn flat_importance(&self, name: &str) -> Option<Vec<f32>> {
        let matrices = self.matrices(name);
        (!matrices.is_empty()).then(|| {
            matrices
                .iter()
                .flat_map(|m| m.importance.iter().copied())
                .collect()
        })
    }
}

/// An error of the file as a whole (no entry to name).
fn not_imatrix(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a llama.cpp imatrix file: {reason}"),
        ),
    }
}

/// An error of one entry or tensor.
fn bad_entry(path: &Path, name: &str, reason: impl Into<String>) -> ModelError {
    ModelError::BadTensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        reason: reason.into(),
    }
}

fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
}

/// The checks every matrix passes, whatever the layout: a count that is a whole number ≥ 0,
/// sums that are finite and ≥ 0, and no sums where the count is 0. Returns the importance: each
/// sum divided by `divisor` (in f32, as llama-quantize divides), or all 1 when the count is 0.
fn importance(
    sums: impl Iterator<Item = f32>,
    channels: usize,
    count: f64,
    divisor: f32,
    what: &dyn Fn() -> String,
) -> Result<Vec<f32>, String> {
    if !count.is_finite() || count < 0.0 {
        return Err(format!("{} has count {count}", what()));
    }
    // Counts are rows or chunks; a fraction of one would also make a finite sum infinite.
    if count.fract() != 0.0 {
        return Err(format!(
            "{} has count {count}, not a whole number of rows",
            what()
        ));
    }
    let mut out = Vec::with_capacity(channels);
    for (j, s) in sums.enumerate() {
        if !s.is_finite() || s < 0.0 {
            return Err(format!(
                "{}: channel {j} has the sum of squares {s} (must be finite and >= 0)",
                what()
            ));
        }
        if count == 0.0 && s != 0.0 {
            return Err(format!(
                "{} has count 0 but channel {j} has the sum of squares {s}",
                what()
            ));
        }
        out.push(if count == 0.0 { 1.0 } else { s / divisor });
    }
    Ok(out)
}

/// Reads the legacy layout front to back; every read checks the bytes left.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        if n > self.left() {
            return Err(not_imatrix(
                self.path,
                format!(
                    "{what} needs {n} bytes at byte {} but the file has {} left",
                    self.pos,
                    self.left()
                ),
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn i32(&mut self, what: &str) -> Result<i32, ModelError> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// An int32 count of items of `item_size` bytes each, refused when negative or when the
    /// bytes left cannot hold that many.
    fn count(&mut self, what: &str, item_size: usize) -> Result<usize, ModelError> {
        let at = self.pos;
        let n = self.i32(what)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(item_size))
            .is_some_and(|need| need <= self.left());
        if !fits {
            return Err(not_imatrix(
                self.path,
                format!(
                    "{what} (at byte {at}) is {n}, more than the {} bytes left could hold",
                    self.left()
                ),
            ));
        }
        Ok(n as usize)
    }
}

/// One legacy entry as stored.
struct LegacyEntry<'a> {
    name: String,
    ncall: i32,
    values: &'a [u8],
}

fn parse_legacy(path: &Path, bytes: &[u8]) -> Result<ImatrixFile, ModelError> {
    let mut c = Cursor {
        path,
        bytes,
        pos: 0,
    };
    // The fewest bytes of an entry: a name length, a one-byte name, ncall, nval, one value.
    let n_entries = c.count("the entry count", 17)?;
    if n_entries == 0 {
        return Err(not_imatrix(path, "the entry count is 0"));
    }
    let mut stored = Vec::new();
    let mut names = HashSet::new();
    for i in 0..n_entries {
        let at = c.pos;
        let len = c.count(&format!("the name length of entry {i}"), 1)?;
        if len == 0 {
            return Err(not_imatrix(
                path,
                format!("entry {i} (at byte {at}) has an empty name"),
            ));
        }
        let name = std::str::from_utf8(c.take(len, &format!("the name of entry {i}"))?)
            .map_err(|e| {
                not_imatrix(
                    path,
                    format!(
                        "the name of entry {i} (at byte {}) is not UTF-8 ({e})",
                        at + 4
                    ),
                )
            })?
            .to_string();
        if !names.insert(name.clone()) {
            return Err(bad_entry(path, &name, "appears twice"));
        }
        let ncall = c.i32(&format!("the ncall of entry '{name}'"))?;
        if ncall < 1 {
            return Err(bad_entry(
                path,
                &name,
                format!("ncall is {ncall} (the chunks it was computed on; must be >= 1)"),
            ));
        }
        let nval = c.count(&format!("the nval of entry '{name}'"), 4)?;
        if nval == 0 {
            return Err(bad_entry(path, &name, "nval is 0"));
        }
        let values = c.take(nval * 4, &format!("the values of entry '{name}'"))?;
        stored.push(LegacyEntry {
            name,
            ncall,
            values,
        });
    }

    let mut chunk_count = None;
    let mut datasets = Vec::new();
    if c.left() > 0 {
        let at = c.pos;
        let chunks = c.i32("the chunk count")?;
        chunk_count = Some(u64::try_from(chunks).map_err(|_| {
            not_imatrix(path, format!("the chunk count (at byte {at}) is {chunks}"))
        })?);
        if c.left() > 0 {
            let len = c.count("the dataset name's length", 1)?;
            let name = c.take(len, "the dataset name")?;
            if len > 0 {
                datasets.push(String::from_utf8_lossy(name).into_owned());
            }
            if c.left() > 0 {
                return Err(not_imatrix(
                    path,
                    format!(
                        "{} bytes after the dataset name (at byte {})",
                        c.left(),
                        c.pos
                    ),
                ));
            }
        }
    }

    let nvals: HashMap<&str, usize> = stored
        .iter()
        .map(|e| (e.name.as_str(), e.values.len() / 4))
        .collect();
    let mut entries = Vec::new();
    for e in &stored {
        let nval = e.values.len() / 4;
        let n_mat = match legacy_experts(&nvals, &e.name) {
            Some((n, from)) if !nval.is_multiple_of(n) => {
                return Err(bad_entry(
                    path,
                    &e.name,
                    format!(
                        "its {nval} values do not split into the {n} experts of its block \
                         ({from})"
                    ),
                ));
            }
            Some((n, _)) => n,
            None => 1,
        };
        let channels = nval / n_mat;
        if u32::try_from(channels).is_err() {
            return Err(bad_entry(path, &e.name, format!("{channels} channels")));
        }
        let values: Vec<f32> = f32s(e.values).collect();
        for (m, sums) in values.chunks_exact(channels).enumerate() {
            let what = || {
                if n_mat > 1 {
                    format!("expert {m}")
                } else {
                    "the entry".to_string()
                }
            };
            let importance = importance(
                sums.iter().copied(),
                channels,
                f64::from(e.ncall),
                e.ncall as f32,
                &what,
            )
            .map_err(|reason| bad_entry(path, &e.name, reason))?;
            entries.push(ImatrixEntry {
                name: e.name.clone(),
                matrix: m as u32,
                channels,
                count: f64::from(e.ncall),
                importance,
            });
        }
    }
    Ok(ImatrixFile {
        path: path.to_path_buf(),
        layout: ImatrixLayout::Legacy,
        entries,
        chunk_count,
        chunk_size: None,
        datasets,
    })
}

/// The expert count of a legacy merged-expert entry `blk.N.<name>_exps.weight`, and where it
/// comes from: the values of the block's widest-input expert entry over those of its router.
/// `None` for every other entry, and where the block has no router entry.
fn legacy_experts(nvals: &HashMap<&str, usize>, name: &str) -> Option<(usize, String)> {
    let (block, tail) = name.strip_prefix("blk.")?.split_once('.')?;
    if !tail.ends_with("_exps.weight") {
        return None;
    }
    let router_name = format!("blk.{block}.ffn_gate_inp.weight");
    let router = *nvals.get(router_name.as_str())?;
    ["ffn_gate_exps", "ffn_up_exps", "ffn_gate_up_exps"]
        .iter()
        .find_map(|wide| {
            let wide_name = format!("blk.{block}.{wide}.weight");
            let n = *nvals.get(wide_name.as_str())?;
            (n.is_multiple_of(router) && n / router > 1).then(|| {
                (
                    n / router,
                    format!("{n} values of {wide_name} / {router} of {router_name}"),
                )
            })
        })
}

/// The pair of one weight tensor, and its optional plain sums.
#[derive(Default)]
struct Pair<'a> {
    in_sum2: Option<&'a GgufTensor>,
    counts: Option<&'a GgufTensor>,
    in_sum: Option<&'a GgufTensor>,
}

fn parse_gguf(path: &Path, bytes: &[u8]) -> Result<ImatrixFile, ModelError> {
    let header = read_header(path, bytes)?;
    let key = |k: &str| header.metadata.iter().find(|e| e.key == k);
    let bad_key = |e: &MetadataEntry, reason: String| ModelError::BadMetadata {
        path: path.to_path_buf(),
        key: e.key.clone(),
        reason,
    };
    let json = |e: &MetadataEntry| -> serde_json::Value {
        serde_json::from_str(&value_json(bytes, e)).unwrap_or(serde_json::Value::Null)
    };

    match key("general.type") {
        None => {
            return Err(not_imatrix(
                path,
                "a GGUF file without general.type (an imatrix has \"imatrix\")",
            ));
        }
        Some(e) if e.value_type != ValueType::String => {
            return Err(bad_key(
                e,
                format!("must be a STRING, not {}", e.value_type.name()),
            ));
        }
        Some(e) => {
            let value = json(e);
            if value.as_str() != Some("imatrix") {
                return Err(not_imatrix(
                    path,
                    format!("a GGUF file of general.type {value}, not \"imatrix\""),
                ));
            }
        }
    }
    let unsigned = |k: &str| -> Result<Option<u64>, ModelError> {
        let Some(e) = key(k) else { return Ok(None) };
        use ValueType::*;
        let integer = matches!(e.value_type, U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64);
        match json(e).as_u64() {
            Some(v) if integer => Ok(Some(v)),
            _ => Err(bad_key(
                e,
                format!(
                    "must be an integer >= 0 (a UINT32), not the {} {}",
                    e.value_type.name(),
                    value_json(bytes, e)
                ),
            )),
        }
    };
    let chunk_count = unsigned("imatrix.chunk_count")?;
    let chunk_size = unsigned("imatrix.chunk_size")?;
    let datasets = match key("imatrix.datasets") {
        None => Vec::new(),
        Some(e) if e.item_type == Some(ValueType::String) => json(e)
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        Some(e) => {
            return Err(bad_key(
                e,
                format!(
                    "must be an array of strings, not {}",
                    match e.item_type {
                        Some(item) => format!("an array of {}", item.name()),
                        None => e.value_type.name().to_string(),
                    }
                ),
            ));
        }
    };

    let mut order: Vec<&str> = Vec::new();
    let mut pairs: HashMap<&str, Pair> = HashMap::new();
    for t in &header.tensors {
        let suffixes = [".in_sum2", ".counts", ".in_sum"];
        let Some((name, kind)) = suffixes
            .iter()
            .enumerate()
            .find_map(|(kind, suffix)| Some((t.name.strip_suffix(suffix)?, kind)))
        else {
            continue;
        };
        if name.is_empty() {
            return Err(bad_entry(path, &t.name, "names no weight tensor"));
        }
        let pair = pairs.entry(name).or_insert_with(|| {
            order.push(name);
            Pair::default()
        });
        // The header refuses a tensor name that appears twice, so a slot is set once.
        match kind {
            0 => pair.in_sum2 = Some(t),
            1 => pair.counts = Some(t),
            _ => pair.in_sum = Some(t),
        }
    }
    if order.is_empty() {
        return Err(not_imatrix(
            path,
            "a GGUF file with no NAME.in_sum2 / NAME.counts tensors",
        ));
    }

    let mut entries = Vec::new();
    for name in order {
        let pair = &pairs[name];
        let (in_sum2, counts) = match (pair.in_sum2, pair.counts) {
            (Some(s), Some(c)) => (s, c),
            (None, _) => {
                return Err(bad_entry(
                    path,
                    name,
                    format!("the file has no {name}.in_sum2 for its counts or sums"),
                ));
            }
            (_, None) => {
                return Err(bad_entry(
                    path,
                    name,
                    format!("the file has {name}.in_sum2 but no {name}.counts"),
                ));
            }
        };
        for t in [Some(in_sum2), Some(counts), pair.in_sum]
            .into_iter()
            .flatten()
        {
            if t.ggml_type.name != "F32" {
                return Err(bad_entry(
                    path,
                    &t.name,
                    format!("is {}, not F32", t.ggml_type.name),
                ));
            }
            if t.dims.len() > 2 && t.dims[2..].iter().any(|&d| d != 1) {
                return Err(bad_entry(
                    path,
                    &t.name,
                    format!("has ne {:?}: more than two dimensions", t.dims),
                ));
            }
        }
        let channels = in_sum2.dims[0];
        let n_mat = in_sum2.dims.get(1).copied().unwrap_or(1);
        let counts_rows = counts.dims.get(1).copied().unwrap_or(1);
        if counts.dims[0] != 1 || counts_rows != n_mat {
            return Err(bad_entry(
                path,
                &counts.name,
                format!(
                    "has ne {:?}, not [1, {n_mat}] for the {n_mat} matrices of {} (ne {:?})",
                    counts.dims, in_sum2.name, in_sum2.dims
                ),
            ));
        }
        if let Some(s) = pair.in_sum
            && s.elements() != in_sum2.elements()
        {
            return Err(bad_entry(
                path,
                &s.name,
                format!(
                    "has ne {:?}, not the shape of {} (ne {:?})",
                    s.dims, in_sum2.name, in_sum2.dims
                ),
            ));
        }
        let (Ok(channels), Ok(n_mat)) = (u32::try_from(channels), u32::try_from(n_mat)) else {
            return Err(bad_entry(
                path,
                &in_sum2.name,
                format!("has ne {:?}: too large", in_sum2.dims),
            ));
        };
        let channels = channels as usize;
        let sums = &bytes[in_sum2.start..in_sum2.start + in_sum2.len];
        let count_values: Vec<f32> =
            f32s(&bytes[counts.start..counts.start + counts.len]).collect();
        for (m, (sums, &count)) in sums
            .chunks_exact(channels * 4)
            .zip(&count_values)
            .enumerate()
        {
            let what = || {
                if n_mat > 1 {
                    format!("matrix {m}")
                } else {
                    "the tensor".to_string()
                }
            };
            let importance = importance(f32s(sums), channels, f64::from(count), count, &what)
                .map_err(|reason| bad_entry(path, name, reason))?;
            entries.push(ImatrixEntry {
                name: name.to_string(),
                matrix: m as u32,
                channels,
                count: f64::from(count),
                importance,
            });
        }
    }
    Ok(ImatrixFile {
        path: path.to_path_buf(),
        layout: ImatrixLayout::Gguf,
        entries,
        chunk_count,
        chunk_size,
        datasets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf_file::GgmlType;
    use crate::gguf_write::{MetaValue, TensorToWrite, write_gguf};

    /// A tensor to write, owning what `TensorToWrite` borrows.
    struct Owned {
        name: String,
        ggml_type: GgmlType,
        dims: Vec<u64>,
        data: Vec<u8>,
    }

    fn legacy(entries: &[(&str, i32, &[f32])], tail: &[u8]) -> Vec<u8> {
        let mut out = (entries.len() as i32).to_le_bytes().to_vec();
        for (name, ncall, values) in entries {
            out.extend((name.len() as i32).to_le_bytes());
            out.extend(name.as_bytes());
            out.extend(ncall.to_le_bytes());
            out.extend((values.len() as i32).to_le_bytes());
            out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
        out.extend(tail);
        out
    }

    fn parse(bytes: &[u8]) -> Result<ImatrixFile, String> {
        ImatrixFile::parse(Path::new("m.imatrix"), bytes).map_err(|e| e.to_string())
    }

    #[test]
    fn legacy_values_are_divided_by_ncall_and_experts_split_by_the_router() {
        let tail: Vec<u8> = [7i32.to_le_bytes(), 4i32.to_le_bytes()]
            .concat()
            .into_iter()
            .chain(*b"wiki")
            .collect();
        let bytes = legacy(
            &[
                ("blk.0.attn_q.weight", 4, &[4.0, 8.0]),
                ("blk.0.ffn_gate_inp.weight", 2, &[1.0, 3.0]),
                (
                    "blk.0.ffn_gate_exps.weight",
                    2,
                    &[2.0, 4.0, 6.0, 8.0, 2.0, 2.0],
                ),
                ("blk.0.ffn_down_exps.weight", 2, &[2.0, 4.0, 6.0]),
                ("blk.1.ffn_up_exps.weight", 1, &[1.0, 2.0, 3.0, 4.0]),
            ],
            &tail,
        );
        let f = parse(&bytes).unwrap();
        assert_eq!(f.layout, ImatrixLayout::Legacy);
        assert_eq!(f.chunk_count, Some(7));
        assert_eq!(f.datasets, ["wiki"]);
        assert_eq!(f.matrices("blk.0.attn_q.weight")[0].importance, [1.0, 2.0]);
        let gate = f.matrices("blk.0.ffn_gate_exps.weight");
        assert_eq!(gate.len(), 3);
        assert_eq!(gate[2].importance, [1.0, 1.0]);
        assert_eq!(gate[2].count, 2.0);
        let down = f.matrices("blk.0.ffn_down_exps.weight");
        assert_eq!((down.len(), down[1].channels), (3, 1));
        // No router in block 1: one matrix, as flat as llama-quantize takes it.
        assert_eq!(f.matrices("blk.1.ffn_up_exps.weight").len(), 1);
        assert_eq!(
            f.flat_importance("blk.0.ffn_down_exps.weight").unwrap(),
            [1.0, 2.0, 3.0]
        );
        assert!(f.flat_importance("nothing").is_none());
    }

    #[test]
    fn legacy_files_without_a_tail_or_with_a_bad_one() {
        let one: &[(&str, i32, &[f32])] = &[("a.weight", 1, &[1.0])];
        let f = parse(&legacy(one, &[])).unwrap();
        assert_eq!((f.chunk_count, f.datasets.len()), (None, 0));
        let f = parse(&legacy(one, &3i32.to_le_bytes())).unwrap();
        assert_eq!(f.chunk_count, Some(3));
        for (tail, want) in [
            (vec![1u8, 2], "the chunk count needs 4 bytes"),
            (
                (-1i32).to_le_bytes().to_vec(),
                "the chunk count (at byte 28) is -1",
            ),
            (
                [1i32, 9].iter().flat_map(|v| v.to_le_bytes()).collect(),
                "is 9, more than",
            ),
            (
                [1i32, 0, 5].iter().flat_map(|v| v.to_le_bytes()).collect(),
                "4 bytes after the dataset name",
            ),
        ] {
            let e = parse(&legacy(one, &tail)).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn legacy_entries_are_checked() {
        for (entries, want) in [
            (
                vec![("a.weight", 1, vec![1.0f32]), ("a.weight", 1, vec![1.0])],
                "'a.weight': appears twice",
            ),
            (vec![("a.weight", 0, vec![1.0])], "'a.weight': ncall is 0"),
            (
                vec![("a.weight", 1, vec![-1.0])],
                "channel 0 has the sum of squares -1",
            ),
            (vec![("a.weight", 1, vec![f32::NAN])], "sum of squares NaN"),
            (vec![("a.weight", 1, vec![])], "'a.weight': nval is 0"),
            (
                vec![
                    ("blk.3.ffn_gate_inp.weight", 1, vec![1.0; 2]),
                    ("blk.3.ffn_gate_exps.weight", 1, vec![1.0; 4]),
                    ("blk.3.ffn_down_exps.weight", 1, vec![1.0; 3]),
                ],
                "its 3 values do not split into the 2 experts",
            ),
        ] {
            let refs: Vec<(&str, i32, &[f32])> =
                entries.iter().map(|(n, c, v)| (*n, *c, &v[..])).collect();
            let e = parse(&legacy(&refs, &[])).unwrap_err();
            assert!(e.starts_with("m.imatrix: ") && e.contains(want), "{e}");
        }
        let good = legacy(&[("a.weight", 1, &[1.0])], &[]);
        for (bytes, want) in [
            (vec![], "the entry count needs 4 bytes"),
            (0i32.to_le_bytes().to_vec(), "the entry count is 0"),
            (
                (-2i32).to_le_bytes().to_vec(),
                "the entry count (at byte 0) is -2",
            ),
            (
                good[..good.len() - 1].to_vec(),
                "the nval of entry 'a.weight' (at byte 20) is 1, more than",
            ),
            (
                [&good[..4], &(-1i32).to_le_bytes()[..], &good[8..]].concat(),
                "the name length of entry 0 (at byte 4) is -1",
            ),
            (
                [&good[..8], &[0xff][..], &good[9..]].concat(),
                "the name of entry 0 (at byte 8) is not UTF-8",
            ),
        ] {
            let e = parse(&bytes).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    fn f32_tensor(name: &str, dims: &[u64], values: &[f32]) -> Owned {
        Owned {
            name: name.to_string(),
            ggml_type: GgmlType::from_name("F32").unwrap(),
            dims: dims.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn gguf(kind: &str, tensors: Vec<Owned>) -> Vec<u8> {
        let metadata = vec![
            ("general.type".to_string(), MetaValue::String(kind.into())),
            ("imatrix.chunk_count".to_string(), MetaValue::U32(3)),
            ("imatrix.chunk_size".to_string(), MetaValue::U32(512)),
        ];
        let tensors: Vec<TensorToWrite> = tensors
            .iter()
            .map(|t| TensorToWrite {
                name: &t.name,
                ggml_type: t.ggml_type,
                dims: t.dims.clone(),
                data: &t.data,
            })
            .collect();
        let mut out = Vec::new();
        write_gguf(&mut out, &metadata, &tensors).unwrap();
        out
    }

    #[test]
    fn gguf_sums_are_divided_by_counts_and_an_unused_expert_reads_as_ones() {
        let bytes = gguf(
            "imatrix",
            vec![
                f32_tensor("a.weight.in_sum2", &[2], &[4.0, 8.0]),
                f32_tensor("a.weight.counts", &[1], &[4.0]),
                f32_tensor("a.weight.in_sum", &[2], &[0.0, -1.0]),
                f32_tensor("e.weight.in_sum2", &[2, 2], &[2.0, 6.0, 0.0, 0.0]),
                f32_tensor("e.weight.counts", &[1, 2], &[2.0, 0.0]),
                f32_tensor("other", &[1], &[0.0]),
            ],
        );
        let f = parse(&bytes).unwrap();
        assert_eq!((f.chunk_count, f.chunk_size), (Some(3), Some(512)));
        assert_eq!(f.entries.len(), 3);
        assert_eq!(f.matrices("a.weight")[0].importance, [1.0, 2.0]);
        let e = f.matrices("e.weight");
        assert_eq!(
            (e[0].importance.as_slice(), e[0].count),
            (&[1.0, 3.0][..], 2.0)
        );
        assert_eq!(
            (e[1].importance.as_slice(), e[1].count),
            (&[1.0, 1.0][..], 0.0)
        );
    }

    #[test]
    fn gguf_files_are_checked() {
        let pair = |sums: &[f32], counts: &[f32]| {
            vec![
                f32_tensor("t.in_sum2", &[2, counts.len() as u64], sums),
                f32_tensor("t.counts", &[1, counts.len() as u64], counts),
            ]
        };
        for (bytes, want) in [
            (
                gguf("model", pair(&[1.0; 2], &[1.0])),
                "general.type \"model\"",
            ),
            (gguf("imatrix", vec![]), "no NAME.in_sum2 / NAME.counts"),
            (
                gguf("imatrix", vec![f32_tensor("t.in_sum2", &[2], &[1.0; 2])]),
                "'t': the file has t.in_sum2 but no t.counts",
            ),
            (
                gguf("imatrix", vec![f32_tensor("t.counts", &[1], &[1.0])]),
                "'t': the file has no t.in_sum2",
            ),
            (
                gguf("imatrix", pair(&[1.0; 2], &[-1.0])),
                "'t': the tensor has count -1",
            ),
            (
                gguf("imatrix", pair(&[1.0; 2], &[f32::NAN])),
                "has count NaN",
            ),
            (
                gguf("imatrix", pair(&[1.0, 1.0], &[0.0])),
                "count 0 but channel 0 has the sum of squares 1",
            ),
            (
                gguf(
                    "imatrix",
                    pair(&[1.0, f32::INFINITY, 0.0, 0.0], &[1.0, 1.0]),
                ),
                "'t': matrix 0: channel 1 has the sum of squares inf",
            ),
            (
                gguf(
                    "imatrix",
                    vec![
                        f32_tensor("t.in_sum2", &[2, 2], &[1.0; 4]),
                        f32_tensor("t.counts", &[1], &[1.0]),
                    ],
                ),
                "'t.counts': has ne [1], not [1, 2]",
            ),
            (
                gguf(
                    "imatrix",
                    vec![
                        f32_tensor("t.in_sum2", &[1, 1, 2], &[1.0; 2]),
                        f32_tensor("t.counts", &[1], &[1.0]),
                    ],
                ),
                "more than two dimensions",
            ),
        ] {
            let e = parse(&bytes).unwrap_err();
            assert!(e.starts_with("m.imatrix: ") && e.contains(want), "{e}");
        }
        let mut f16 = pair(&[1.0; 2], &[1.0]);
        f16[0].ggml_type = GgmlType::from_name("F16").unwrap();
        f16[0].data.truncate(4);
        let e = parse(&gguf("imatrix", f16)).unwrap_err();
        assert!(e.contains("'t.in_sum2': is F16, not F32"), "{e}");
    }
}
