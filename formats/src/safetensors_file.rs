//! One safetensors file, memory-mapped and validated.
//!
//! The header is parsed here into typed entries and checked as the `safetensors` crate checks
//! it (offsets contiguous, sizes equal to dtype × shape, data ending where the file ends), with
//! errors that name the tensor at fault. Tensor bytes are never copied at open: the map is
//! shared with the Arrow buffers the scan hands out.

use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_buffer::Buffer;
use memmap2::Mmap;
use safetensors::tensor::Dtype;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

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

    /// Tells the kernel the pages of `[start, start + len)` are not needed for now (see
    /// [`release_pages`]).
    pub fn release(&self, start: usize, len: usize) {
        release_pages(&self.map, start, len);
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
    let header = &bytes[8..8 + header_len as usize];
    let entries = parse_header(path, header)?;
    check_layout(path, 8 + header.len(), file_len, entries)
}

/// The most dimensions a tensor may have. PyTorch and NumPy stop at 64; a longer shape is a
/// corrupt or hostile header, and refusing it keeps memory in step with the tensors described.
pub const MAX_RANK: usize = 64;

/// A tensor's entry in the header, as written. Unknown fields are skipped without being built.
#[derive(serde::Deserialize)]
struct Entry {
    dtype: Dtype,
    #[serde(deserialize_with = "bounded_shape")]
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

fn bounded_shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<usize>, D::Error> {
    struct ShapeVisitor;
    impl<'de> Visitor<'de> for ShapeVisitor {
        type Value = Vec<usize>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_RANK} dimensions")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<usize>, A::Error> {
            let mut shape = Vec::new();
            while let Some(d) = seq.next_element::<usize>()? {
                if shape.len() == MAX_RANK {
                    return Err(de::Error::custom(format!(
                        "shape has more than {MAX_RANK} dimensions"
                    )));
                }
                shape.push(d);
            }
            Ok(shape)
        }
    }
    d.deserialize_seq(ShapeVisitor)
}

/// Reads the header's JSON straight into typed entries, one per tensor, so that memory
/// follows the tensors described rather than the JSON's shape (a generic JSON value, or
/// serde's buffering for `#[serde(flatten)]`, costs tens of bytes per JSON token). Nesting
/// stays under serde_json's recursion limit (128); skipped values are skipped iteratively.
fn parse_header(path: &Path, header: &[u8]) -> Result<Vec<(String, Entry)>, ModelError> {
    let text = std::str::from_utf8(header)
        .map_err(|e| not_safetensors(path, format!("header is not UTF-8: {e}")))?;
    // The tensor being read when an error occurs, to name it.
    let current = std::cell::RefCell::new(None::<String>);
    let mut de = serde_json::Deserializer::from_str(text);
    let result = (&mut de)
        .deserialize_map(HeaderVisitor { current: &current })
        .and_then(|entries| de.end().map(|()| entries));
    let entries = result.map_err(|e| match current.take() {
        Some(tensor) => ModelError::BadTensor {
            path: path.to_path_buf(),
            tensor,
            reason: format!("header entry is not a valid tensor description: {e}"),
        },
        None => not_safetensors(path, format!("header is not a valid tensor table: {e}")),
    })?;
    let mut names = std::collections::HashSet::with_capacity(entries.len());
    for (name, _) in &entries {
        if !names.insert(name.as_str()) {
            return Err(ModelError::BadTensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
                reason: "appears twice in the header".into(),
            });
        }
    }
    Ok(entries)
}

struct HeaderVisitor<'a> {
    current: &'a std::cell::RefCell<Option<String>>,
}

impl<'de> Visitor<'de> for HeaderVisitor<'_> {
    type Value = Vec<(String, Entry)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of tensor names to {dtype, shape, data_offsets}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            if name == "__metadata__" {
                // Free-form text pairs, as the format defines them; nothing here reads them.
                map.next_value::<Option<MetadataCheck>>()?;
                continue;
            }
            *self.current.borrow_mut() = Some(name);
            let entry = map.next_value::<Entry>()?;
            let name = self.current.borrow_mut().take().expect("set above");
            entries.push((name, entry));
        }
        Ok(entries)
    }
}

/// Checks `__metadata__` is a map of strings to strings without keeping it.
struct MetadataCheck;

impl<'de> serde::Deserialize<'de> for MetadataCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetadataCheck;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("__metadata__ as an object of strings to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetadataCheck, A::Error> {
                while map.next_entry::<String, String>()?.is_some() {}
                Ok(MetadataCheck)
            }
        }
        d.deserialize_map(V)
    }
}

/// Checks the entries describe the data exactly: sorted by offset they are contiguous from
/// the end of the header, each spans dtype × shape bytes, and the last ends where the file
/// does. Returns the tensors in file order.
fn check_layout(
    path: &Path,
    data_start: usize,
    file_len: u64,
    mut entries: Vec<(String, Entry)>,
) -> Result<Vec<TensorMeta>, ModelError> {
    entries.sort_by_key(|(_, e)| e.data_offsets);
    let bad = |tensor: &str, reason: String| ModelError::BadTensor {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        reason,
    };
    let mut end = 0usize;
    let mut previous: Option<&str> = None;
    for (name, e) in &entries {
        let (s, t) = e.data_offsets;
        if t < s {
            return Err(bad(
                name,
                format!("data offsets [{s}, {t}] end before they start"),
            ));
        }
        if s < end {
            return Err(bad(
                name,
                format!(
                    "data offsets [{s}, {t}] overlap another tensor ('{}' ends at {end})",
                    previous.unwrap_or("")
                ),
            ));
        }
        if s > end {
            return Err(bad(
                name,
                format!(
                    "data offsets [{s}, {t}] leave a gap after byte {end} (tensor data must be \
                     contiguous)"
                ),
            ));
        }
        // Zero dimensions are left out of the overflow check, because a zero anywhere makes
        // the product 0, and the scan still multiplies the others (the values per row).
        let overflow = || {
            bad(
                name,
                format!("shape {:?} overflows the address space", e.shape),
            )
        };
        e.shape
            .iter()
            .filter(|&&d| d > 0)
            .try_fold(e.dtype.bitsize(), |a, &d| a.checked_mul(d))
            .ok_or_else(overflow)?;
        let bits = e
            .shape
            .iter()
            .try_fold(e.dtype.bitsize(), |a, &d| a.checked_mul(d))
            .ok_or_else(overflow)?;
        // A tensor without values read as rows: as many as its first dimension says, unbounded
        // by the file's size (shape [2^40, 0] would be 2^40 empty rows).
        if bits == 0 && crate::row_layout(&e.shape).0 > 1 {
            return Err(bad(
                name,
                format!(
                    "shape {:?} holds no values but would be {} rows; a tensor without values \
                     can have at most one row",
                    e.shape,
                    crate::row_layout(&e.shape).0
                ),
            ));
        }
        if !bits.is_multiple_of(8) {
            // Sub-byte dtypes (F4, F6) whose elements do not fill whole bytes: the format
            // stores whole bytes, and so does every reader.
            return Err(bad(
                name,
                format!(
                    "dtype {:?} ({} bits an element) × shape {:?} is {bits} bits, not a whole \
                     number of bytes: a safetensors tensor must fill whole bytes",
                    e.dtype,
                    e.dtype.bitsize(),
                    e.shape
                ),
            ));
        }
        if bits / 8 != t - s {
            return Err(bad(
                name,
                format!(
                    "data offsets span {} bytes but dtype × shape needs {}",
                    t - s,
                    bits / 8
                ),
            ));
        }
        end = t;
        previous = Some(name);
    }
    if data_start as u64 + end as u64 != file_len {
        return Err(not_safetensors(
            path,
            format!(
                "tensor data does not end where the file ends: the header describes {end} bytes \
                 of data, the file holds {} after the header (offsets out of range or trailing \
                 bytes)",
                file_len - data_start as u64
            ),
        ));
    }
    Ok(entries
        .into_iter()
        .map(|(name, e)| TensorMeta {
            dtype: e.dtype,
            start: data_start + e.data_offsets.0,
            len: e.data_offsets.1 - e.data_offsets.0,
            shape: e.shape,
            name,
        })
        .collect())
}

/// Tells the kernel the pages of `[start, start + len)` of a map are not needed for now, so
/// that a scan over a model larger than memory keeps a bounded resident set. Later reads fault
/// the pages back in from the page cache or the file: the contents never change.
pub(crate) fn release_pages(map: &Mmap, start: usize, len: usize) {
    let page = 4096;
    let first = start.div_ceil(page) * page;
    let end = (start + len) / page * page;
    if end > first {
        // SAFETY: the map is read-only and file-backed, so dropping its pages loses nothing.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first)
        };
    }
}

pub(crate) fn whole_map_buffer(map: &Arc<Mmap>) -> Buffer {
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

/// The name the checkpoint uses for a dtype (`F32`, `BF16`, ...).
pub fn dtype_name(dtype: Dtype) -> String {
    format!("{dtype:?}")
}

/// The dtype a [`dtype_name`] names (the format's own spelling: `F32`, `BF16`, ...).
pub fn dtype_of_name(name: &str) -> Option<Dtype> {
    use serde::Deserialize;
    use serde::de::value::{Error, StrDeserializer};
    Dtype::deserialize(StrDeserializer::<Error>::new(name)).ok()
}

/// Dtypes read into the `weights` column (widened to f32) and eligible for quantization.
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of one tensor with this shape and no data.
    fn empty_tensor(shape: &str) -> Vec<u8> {
        let header = format!(r#"{{"t":{{"dtype":"F32","shape":{shape},"data_offsets":[0,0]}}}}"#);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes
    }

    #[test]
    fn tensors_without_values_are_at_most_one_row_and_never_overflow() {
        let read = |shape: &str| read_table(Path::new("m.safetensors"), &empty_tensor(shape));
        for ok in ["[0]", "[0, 768]", "[1, 0]", "[0, 0, 3]"] {
            assert!(read(ok).is_ok(), "{ok}: {:?}", read(ok));
        }
        for (shape, want) in [
            (
                "[1099511627776, 0]",
                "holds no values but would be 1099511627776 rows",
            ),
            ("[5, 0]", "holds no values but would be 5 rows"),
            ("[3, 4, 0]", "holds no values but would be 3 rows"),
            (
                "[0, 4611686018427387904, 4611686018427387904]",
                "overflows the address space",
            ),
            (
                "[0, 18446744073709551615, 2]",
                "overflows the address space",
            ),
        ] {
            let e = read(shape).unwrap_err().to_string();
            assert!(e.contains("tensor 't'") && e.contains(want), "{shape}: {e}");
        }
    }

    #[test]
    fn dtype_names_read_back() {
        for dtype in [
            Dtype::BOOL,
            Dtype::F4,
            Dtype::F8_E4M3,
            Dtype::BF16,
            Dtype::F32,
            Dtype::C64,
        ] {
            assert_eq!(dtype_of_name(&dtype_name(dtype)), Some(dtype));
        }
        assert_eq!(dtype_of_name("F3"), None);
        assert_eq!(dtype_of_name("f32"), None);
    }
}
