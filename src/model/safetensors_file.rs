//! One safetensors file, memory-mapped and validated.
//!
//! The header is parsed and checked by the `safetensors` crate (offsets contiguous, sizes equal
//! to dtype × shape, data ending where the file ends); when it refuses a file, the error is
//! explained here with the tensor it concerns. Tensor bytes are never copied at open: the map is
//! shared with the Arrow buffers the scan hands out.

use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use datafusion::arrow::buffer::Buffer;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorInfo};

use super::error::ModelError;

/// A tensor's place in its file.
#[derive(Debug, Clone)]
pub struct TensorMeta {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the first element in the file.
    pub start: usize,
    pub len: usize,
}

impl TensorMeta {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A memory-mapped safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: Arc<Mmap>,
    /// The whole map as an Arrow buffer: slices of it are zero-copy columns.
    buffer: Buffer,
    /// Tensors in file order.
    tensors: Vec<TensorMeta>,
}

/// The largest header the format allows (the `safetensors` crate refuses larger ones too).
const MAX_HEADER: u64 = 100_000_000;

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = super::input::open_regular(path)?;
        let meta = file.metadata().map_err(|e| ModelError::io(path, e))?;
        let file_len = meta.len();
        if file_len < 8 {
            return Err(not_safetensors(
                path,
                format!("{file_len} bytes is too short for the 8-byte header length"),
            ));
        }
        // SAFETY: the map is read-only. Like every reader of memory-mapped checkpoints, we rely
        // on the file not being truncated while it is read; input files are never written.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let tensors = read_table(path, &map)?;
        let map = Arc::new(map);
        let buffer = whole_map_buffer(&map);
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            buffer,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensors(&self) -> &[TensorMeta] {
        &self.tensors
    }

    /// `len` bytes at `start`, as a zero-copy Arrow buffer.
    pub fn buffer(&self, start: usize, len: usize) -> Buffer {
        self.buffer.slice_with_length(start, len)
    }

    pub fn bytes(&self, start: usize, len: usize) -> &[u8] {
        &self.map[start..start + len]
    }

    /// Tells the kernel the pages of `[start, start + len)` are not needed for now, so that a
    /// scan over a model larger than memory keeps a bounded resident set. Later reads fault the
    /// pages back in from the page cache or the file: the contents never change.
    pub fn release(&self, start: usize, len: usize) {
        let page = 4096;
        let first = start.div_ceil(page) * page;
        let end = (start + len) / page * page;
        if end > first {
            // SAFETY: the map is read-only and file-backed, so dropping its pages loses nothing.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    first,
                    end - first,
                )
            };
        }
    }
}

/// Parses and validates the tensor table of a whole safetensors file held in `bytes`; every
/// tensor returned lies inside `bytes`. `path` only names the file in errors.
pub fn read_table(path: &Path, bytes: &[u8]) -> Result<Vec<TensorMeta>, ModelError> {
    let file_len = bytes.len() as u64;
    let Some(length) = bytes.get(..8) else {
        return Err(not_safetensors(
            path,
            format!("{file_len} bytes is too short for the 8-byte header length"),
        ));
    };
    let header_len = u64::from_le_bytes(length.try_into().expect("8 bytes"));
    if header_len > file_len - 8 {
        return Err(not_safetensors(
            path,
            format!("header length {header_len} runs past the end of the file ({file_len} bytes)"),
        ));
    }
    if header_len > MAX_HEADER {
        return Err(not_safetensors(
            path,
            format!("header length {header_len} is over the format's limit of {MAX_HEADER}"),
        ));
    }
    let (n, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| explain(path, bytes, e))?;
    let data_start = 8 + n;
    Ok(metadata
        .offset_keys()
        .into_iter()
        .map(|name| {
            let info = metadata.info(&name).expect("a key of the header");
            TensorMeta {
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: data_start + info.data_offsets.0,
                len: info.data_offsets.1 - info.data_offsets.0,
                name,
            }
        })
        .collect())
}

fn whole_map_buffer(map: &Arc<Mmap>) -> Buffer {
    let ptr = NonNull::new(map.as_ptr() as *mut u8).unwrap_or(NonNull::dangling());
    // SAFETY: the pointer is valid for `map.len()` bytes for as long as the map lives, and the
    // buffer holds the `Arc` that keeps it alive.
    unsafe { Buffer::from_custom_allocation(ptr, map.len(), map.clone()) }
}

fn not_safetensors(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::NotSafetensors {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Turns the `safetensors` crate's refusal into a message that names the tensor at fault.
fn explain(path: &Path, map: &[u8], error: SafeTensorError) -> ModelError {
    let bad_tensor = |tensor: String, reason: String| ModelError::BadTensor {
        path: path.to_path_buf(),
        tensor,
        reason,
    };
    match error {
        SafeTensorError::InvalidHeader(e) => {
            not_safetensors(path, format!("header is not UTF-8: {e}"))
        }
        SafeTensorError::InvalidHeaderDeserialization(e) => {
            not_safetensors(path, format!("header is not a valid tensor table: {e}"))
        }
        SafeTensorError::InvalidOffset(tensor) => bad_tensor(
            tensor,
            "data offsets overlap another tensor, leave a gap, or end before they start".into(),
        ),
        SafeTensorError::TensorInvalidInfo | SafeTensorError::MisalignedSlice => {
            match tensor_with_wrong_size(map) {
                Some((tensor, reason)) => bad_tensor(tensor, reason),
                None => not_safetensors(path, error.to_string()),
            }
        }
        SafeTensorError::MetadataIncompleteBuffer => not_safetensors(
            path,
            format!(
                "tensor data does not end where the file ends ({} bytes): offsets out of range or \
                 trailing bytes",
                map.len()
            ),
        ),
        SafeTensorError::ValidationOverflow => {
            not_safetensors(path, "a tensor's shape overflows the address space")
        }
        other => not_safetensors(path, other.to_string()),
    }
}

/// The first tensor whose byte span disagrees with its dtype and shape, and what is wrong.
fn tensor_with_wrong_size(map: &[u8]) -> Option<(String, String)> {
    let n = u64::from_le_bytes(map.get(..8)?.try_into().ok()?) as usize;
    let header = std::str::from_utf8(map.get(8..8 + n)?).ok()?;
    let table: serde_json::Map<String, serde_json::Value> = serde_json::from_str(header).ok()?;
    for (name, value) in table {
        if name == "__metadata__" {
            continue;
        }
        let Ok(info) = serde_json::from_value::<TensorInfo>(value) else {
            continue;
        };
        let bits = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize(), |a, &d| a.checked_mul(d))?;
        let (s, e) = info.data_offsets;
        let actual = e.saturating_sub(s);
        if !bits.is_multiple_of(8) {
            // Sub-byte dtypes (F4, F6) whose elements do not fill whole bytes: the format
            // stores whole bytes, and so does every reader.
            return Some((
                name,
                format!(
                    "dtype {:?} ({} bits an element) × shape {:?} is {bits} bits, not a whole \
                     number of bytes: a safetensors tensor must fill whole bytes",
                    info.dtype,
                    info.dtype.bitsize(),
                    info.shape
                ),
            ));
        }
        if bits / 8 != actual {
            return Some((
                name,
                format!(
                    "data offsets span {actual} bytes but dtype × shape needs {}",
                    bits / 8
                ),
            ));
        }
    }
    None
}

/// The name the checkpoint uses for a dtype (`F32`, `BF16`, ...).
pub fn dtype_name(dtype: Dtype) -> String {
    format!("{dtype:?}")
}

/// Dtypes read into the `weights` column (widened to f32) and eligible for quantization.
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}
