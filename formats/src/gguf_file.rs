//! One GGUF file (llama.cpp's model format, versions 2 and 3), memory-mapped and validated.
//!
//! Layout, from ggml's `gguf.h` / `docs/gguf.md`: the magic `GGUF`, a u32 version, u64 counts
//! of tensors and metadata entries, the metadata (key string, u32 value type, value), the
//! tensor infos (name, u32 dimension count, u64 dimensions innermost first, u32 ggml type, u64
//! offset into the data section), then the data section, which starts at the next multiple of
//! `general.alignment` (32 when absent). All little-endian.
//!
//! Every count and length comes from the file, so none sizes an allocation: each is checked
//! against the bytes left before anything is read, and metadata values are validated in place
//! and kept as byte ranges of the map, decoded only when asked for. Errors name the file and
//! the key or tensor at fault, and where in the file it went wrong.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_buffer::Buffer;
use memmap2::Mmap;

use super::error::ModelError;

/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// ggml's limit on a tensor's dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// How deep arrays of arrays may nest (real files use one level).
const MAX_NESTING: usize = 8;

/// A ggml tensor type: its id in the file, its name as gguf-py spells it, and its block (values
/// per block, bytes per block; 1 and the element size for plain types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    pub block_values: u32,
    pub block_bytes: u32,
}

/// Every type ggml defines, from `ggml.h`'s `ggml_type` and its type traits, as gguf-py 0.19.0's
/// `GGML_QUANT_SIZES` has them (ids 4, 5, 31 to 33 and 36 to 38 are retired and refused).
const GGML_TYPES: &[GgmlType] = &[
    t(0, "F32", 1, 4),
    t(1, "F16", 1, 2),
    t(2, "Q4_0", 32, 18),
    t(3, "Q4_1", 32, 20),
    t(6, "Q5_0", 32, 22),
    t(7, "Q5_1", 32, 24),
    t(8, "Q8_0", 32, 34),
    t(9, "Q8_1", 32, 40),
    t(10, "Q2_K", 256, 84),
    t(11, "Q3_K", 256, 110),
    t(12, "Q4_K", 256, 144),
    t(13, "Q5_K", 256, 176),
    t(14, "Q6_K", 256, 210),
    t(15, "Q8_K", 256, 292),
    t(16, "IQ2_XXS", 256, 66),
    t(17, "IQ2_XS", 256, 74),
    t(18, "IQ3_XXS", 256, 98),
    t(19, "IQ1_S", 256, 50),
    t(20, "IQ4_NL", 32, 18),
    t(21, "IQ3_S", 256, 110),
    t(22, "IQ2_S", 256, 82),
    t(23, "IQ4_XS", 256, 136),
    t(24, "I8", 1, 1),
    t(25, "I16", 1, 2),
    t(26, "I32", 1, 4),
    t(27, "I64", 1, 8),
    t(28, "F64", 1, 8),
    t(29, "IQ1_M", 256, 56),
    t(30, "BF16", 1, 2),
    t(34, "TQ1_0", 256, 54),
    t(35, "TQ2_0", 256, 66),
    t(39, "MXFP4", 32, 17),
    t(40, "NVFP4", 64, 36),
    t(41, "Q1_0", 128, 18),
];

const fn t(id: u32, name: &'static str, block_values: u32, block_bytes: u32) -> GgmlType {
    GgmlType {
        id,
        name,
        block_values,
        block_bytes,
    }
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GGML_TYPES.iter().copied().find(|t| t.id == id)
    }

    pub fn from_name(name: &str) -> Option<GgmlType> {
        GGML_TYPES
            .iter()
            .copied()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// Plain integers (no float view).
    pub fn is_integer(self) -> bool {
        matches!(self.name, "I8" | "I16" | "I32" | "I64")
    }

    /// Bytes of `values` values, which must be whole blocks; `None` when they are not or the
    /// size overflows.
    pub fn bytes_of(self, values: u64) -> Option<u64> {
        let block = u64::from(self.block_values);
        if !values.is_multiple_of(block) {
            return None;
        }
        (values / block).checked_mul(u64::from(self.block_bytes))
    }
}

/// The type of a metadata value (`gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// The name gguf-py gives the type (`GGUFValueType`).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }

    /// Bytes of a fixed-size value; `None` for strings and arrays.
    fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The fewest bytes one value of this type takes: what bounds a count read from the file.
    fn min_size(self) -> usize {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            other => other.fixed_size().unwrap_or(1),
        }
    }
}

/// One metadata entry: its key, its type (and its items' type for an array), and where its
/// value's bytes lie in the file, validated but not decoded.
#[derive(Debug, Clone)]
pub struct MetadataEntry {
    pub key: String,
    pub value_type: ValueType,
    /// For arrays: the type of the items.
    pub item_type: Option<ValueType>,
    /// The value's bytes (after the type tag), as absolute offsets in the file.
    pub value: std::ops::Range<usize>,
}

/// One tensor: its name, type, dimensions as the file gives them (innermost first, as ggml's
/// `ne`) and as a row-major shape (outermost first, as numpy and safetensors give it), and its
/// bytes as absolute offsets in the file.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    pub ggml_type: GgmlType,
    pub dims: Vec<u64>,
    pub shape: Vec<usize>,
    /// The offset the file states, relative to the data section.
    pub offset: u64,
    pub start: usize,
    pub len: usize,
}

impl GgufTensor {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Everything before the data section, validated.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_start: usize,
    pub metadata: Vec<MetadataEntry>,
    /// Tensors in the order of their infos.
    pub tensors: Vec<GgufTensor>,
}

/// A memory-mapped GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    buffer: Buffer,
    header: GgufHeader,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = super::input::open_regular(path)?;
        // SAFETY: the map is read-only. Like every reader of memory-mapped checkpoints, we rely
        // on the file not being truncated while it is read; input files are never written.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let header = read_header(path, &map)?;
        let map = Arc::new(map);
        let buffer = super::safetensors_file::whole_map_buffer(&map);
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            buffer,
            header,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    pub fn tensors(&self) -> &[GgufTensor] {
        &self.header.tensors
    }

    /// The bytes of the file, `[start, start + len)`.
    pub fn bytes(&self, start: usize, len: usize) -> &[u8] {
        &self.map[start..start + len]
    }

    /// `len` bytes at `start`, as a zero-copy Arrow buffer.
    pub fn buffer(&self, start: usize, len: usize) -> Buffer {
        self.buffer.slice_with_length(start, len)
    }

    /// Tells the kernel the pages of `[start, start + len)` are not needed for now.
    pub fn release(&self, start: usize, len: usize) {
        super::safetensors_file::release_pages(&self.map, start, len);
    }

    /// The value of a scalar entry; `None` for an array (see [`json`](Self::json)).
    pub fn value(&self, entry: &MetadataEntry) -> Option<Value> {
        let mut pos = entry.value.start;
        (entry.value_type != ValueType::Array)
            .then(|| read_scalar(&self.map, &mut pos, entry.value_type))
    }

    /// The value of any entry as JSON text, written straight from the file's bytes (an array
    /// of a million items is never a million decoded values).
    pub fn json(&self, entry: &MetadataEntry) -> String {
        value_json(&self.map, entry)
    }

    /// The value as text: a string as it is, anything else as JSON.
    pub fn text(&self, entry: &MetadataEntry) -> String {
        match self.value(entry) {
            Some(Value::String(s)) => s,
            _ => self.json(entry),
        }
    }
}

/// A scalar metadata value, decoded. Strings are shown with invalid UTF-8 replaced (U+FFFD):
/// GGUF does not require UTF-8 of values, and the file's bytes are never rewritten from this.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    UInt(u64),
    /// A FLOAT32, kept as one so that it prints as its shortest f32 form (0.1, not
    /// 0.10000000149011612).
    Float32(f32),
    Float(f64),
    Bool(bool),
    String(String),
}

impl Value {
    fn write_json(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Value::Int(v) => write!(out, "{v}").expect("to a String"),
            Value::UInt(v) => write!(out, "{v}").expect("to a String"),
            // JSON has no NaN or infinity: those are written as strings.
            Value::Float32(v) if v.is_finite() => write!(out, "{v:?}").expect("to a String"),
            Value::Float(v) if v.is_finite() => write!(out, "{v:?}").expect("to a String"),
            Value::Float32(v) => write!(out, "\"{v}\"").expect("to a String"),
            Value::Float(v) => write!(out, "\"{v}\"").expect("to a String"),
            Value::Bool(v) => out.push_str(if *v { "true" } else { "false" }),
            Value::String(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
        }
    }
}

/// Reads the file's bytes front to back; every read checks the bytes left.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn fail(&self, what: &str) -> ModelError {
        not_gguf(self.path, format!("{what} (at byte {})", self.pos))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        if n > self.left() {
            return Err(self.fail(&format!(
                "{what} needs {n} bytes but the file has {} left",
                self.left()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A count of items of at least `min_size` bytes each, refused when the file cannot hold
    /// that many: so no count read from the file can make a loop run past its end.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize, ModelError> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_size))
            .is_some_and(|need| need <= self.left());
        if !fits {
            return Err(self.fail(&format!(
                "{what} is {n}, more than the {} bytes left could hold",
                self.left()
            )));
        }
        Ok(n as usize)
    }

    /// A string's bytes (u64 length, then the bytes).
    fn string_bytes(&mut self, what: &str) -> Result<&'a [u8], ModelError> {
        let len = self.count(&format!("the length of {what}"), 1)?;
        self.take(len, what)
    }

    fn utf8(&mut self, what: &str) -> Result<String, ModelError> {
        let start = self.pos;
        let bytes = self.string_bytes(what)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| {
            not_gguf(
                self.path,
                format!("{what} is not UTF-8 ({e}) (the string at byte {start})"),
            )
        })
    }
}

/// Parses and validates everything before the data section of a GGUF file held in `bytes`,
/// and checks every tensor lies inside `bytes`. `path` only names the file in errors.
pub fn read_header(path: &Path, bytes: &[u8]) -> Result<GgufHeader, ModelError> {
    let mut c = Cursor {
        path,
        bytes,
        pos: 0,
    };
    let magic = c.take(4, "the magic")?;
    if magic != b"GGUF" {
        return Err(not_gguf(
            path,
            format!("the magic is {magic:02x?}, not \"GGUF\""),
        ));
    }
    let version = c.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(not_gguf(
            path,
            format!("version {version} is not supported (2 and 3 are)"),
        ));
    }
    // The fewest bytes of a tensor info: an empty name (8), one dimension (4 + 8), type (4),
    // offset (8); of a metadata entry: an empty key (8), a type (4) and a one-byte value.
    let tensor_count = c.count("the tensor count", 32)?;
    let entry_count = c.count("the metadata entry count", 13)?;

    let mut metadata = Vec::new();
    let mut keys = HashSet::new();
    for i in 0..entry_count {
        let key = c.utf8(&format!("the key of metadata entry {i}"))?;
        let bad = |reason: String| ModelError::BadMetadata {
            path: path.to_path_buf(),
            key: key.clone(),
            reason,
        };
        if !keys.insert(key.clone()) {
            return Err(bad("the key appears twice".into()));
        }
        let type_id = c.u32("a value type")?;
        let value_type = ValueType::from_id(type_id)
            .ok_or_else(|| bad(format!("unknown value type {type_id}")))?;
        let start = c.pos;
        let item_type = skip_value(&mut c, value_type, 0).map_err(|e| bad(e.to_string()))?;
        metadata.push(MetadataEntry {
            key,
            value_type,
            item_type,
            value: start..c.pos,
        });
    }

    let alignment = match metadata.iter().find(|e| e.key == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(e) => {
            let bad = |reason: &str| ModelError::BadMetadata {
                path: path.to_path_buf(),
                key: e.key.clone(),
                reason: reason.into(),
            };
            if e.value_type != ValueType::U32 {
                return Err(bad(&format!(
                    "must be a UINT32, not {}",
                    e.value_type.name()
                )));
            }
            let v = u64::from(u32::from_le_bytes(
                bytes[e.value.clone()].try_into().expect("4 bytes"),
            ));
            if v == 0 || !v.is_power_of_two() {
                return Err(bad(&format!("{v} is not a power of two")));
            }
            v
        }
    };

    let mut infos = Vec::new();
    let mut names = HashSet::new();
    for i in 0..tensor_count {
        let name = c.utf8(&format!("the name of tensor {i}"))?;
        let bad = |reason: String| ModelError::BadTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            reason,
        };
        if !names.insert(name.clone()) {
            return Err(bad("the name appears twice".into()));
        }
        let n_dims = c.u32("a dimension count")? as usize;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(bad(format!(
                "{n_dims} dimensions (ggml allows 1 to {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(c.u64("a dimension")?);
        }
        let type_id = c.u32("a tensor type")?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| bad(format!("unknown ggml type {type_id}")))?;
        let offset = c.u64("a tensor offset")?;
        infos.push((name, ggml_type, dims, offset));
    }
    let data_start = (c.pos as u64).next_multiple_of(alignment);

    let mut tensors = Vec::with_capacity(infos.len());
    for (name, ggml_type, dims, offset) in infos {
        let bad = |reason: String| ModelError::BadTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            reason,
        };
        // An empty dimension would make rows without values: as many as the others say,
        // unbounded by the file's size.
        if let Some(j) = dims.iter().position(|&d| d == 0) {
            return Err(bad(format!("dimension {j} of {dims:?} is 0")));
        }
        // ggml holds dimensions and sizes as int64.
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
        if !dims[0].is_multiple_of(u64::from(ggml_type.block_values)) {
            return Err(bad(format!(
                "its first dimension {} is not a multiple of {}'s block of {} values",
                dims[0], ggml_type.name, ggml_type.block_values
            )));
        }
        let len = ggml_type
            .bytes_of(elements)
            .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
        if !offset.is_multiple_of(alignment) {
            return Err(bad(format!(
                "offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let end = data_start
            .checked_add(offset)
            .and_then(|s| s.checked_add(len))
            .filter(|&end| end <= bytes.len() as u64)
            .ok_or_else(|| {
                bad(format!(
                    "its {len} bytes at offset {offset} of the data section (byte {data_start}) \
                     run past the end of the file ({} bytes)",
                    bytes.len()
                ))
            })?;
        let shape = dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).expect("within the file's size"))
            .collect();
        tensors.push(GgufTensor {
            name,
            ggml_type,
            dims,
            shape,
            offset,
            start: (end - len) as usize,
            len: len as usize,
        });
    }

    let mut by_start: Vec<&GgufTensor> = tensors.iter().filter(|t| t.len > 0).collect();
    by_start.sort_by_key(|t| t.start);
    for pair in by_start.windows(2) {
        if pair[0].start + pair[0].len > pair[1].start {
            return Err(ModelError::BadTensor {
                path: path.to_path_buf(),
                tensor: pair[1].name.clone(),
                reason: format!(
                    "its bytes overlap those of tensor '{}' (offsets {} and {})",
                    pair[0].name, pair[0].offset, pair[1].offset
                ),
            });
        }
    }

    Ok(GgufHeader {
        version,
        alignment,
        data_start: data_start as usize,
        metadata,
        tensors,
    })
}

/// Walks over one value, checking it fits; returns the item type of an array.
fn skip_value(
    c: &mut Cursor,
    value_type: ValueType,
    depth: usize,
) -> Result<Option<ValueType>, ModelError> {
    if let Some(size) = value_type.fixed_size() {
        let b = c.take(size, &format!("a {} value", value_type.name()))?;
        if value_type == ValueType::Bool && b[0] > 1 {
            return Err(c.fail(&format!("a BOOL is {}, not 0 or 1", b[0])));
        }
        return Ok(None);
    }
    match value_type {
        ValueType::String => {
            c.string_bytes("a string")?;
            Ok(None)
        }
        _ => {
            if depth >= MAX_NESTING {
                return Err(c.fail(&format!("arrays nest deeper than {MAX_NESTING} levels")));
            }
            let item_id = c.u32("an array's item type")?;
            let item = ValueType::from_id(item_id)
                .ok_or_else(|| c.fail(&format!("unknown array item type {item_id}")))?;
            let n = c.count("an array's length", item.min_size())?;
            match item.fixed_size() {
                Some(size) if item != ValueType::Bool => {
                    c.take(n * size, "an array's items")?;
                }
                _ => {
                    for _ in 0..n {
                        skip_value(c, item, depth + 1)?;
                    }
                }
            }
            Ok(Some(item))
        }
    }
}

/// JSON text of a value that [`read_header`] validated in `bytes`.
pub fn value_json(bytes: &[u8], entry: &MetadataEntry) -> String {
    let mut out = String::new();
    let mut pos = entry.value.start;
    write_json(bytes, &mut pos, entry.value_type, &mut out);
    out
}

fn write_json(bytes: &[u8], pos: &mut usize, value_type: ValueType, out: &mut String) {
    if value_type != ValueType::Array {
        read_scalar(bytes, pos, value_type).write_json(out);
        return;
    }
    let item = ValueType::from_id(u32::from_le_bytes(take::<4>(bytes, pos))).expect("validated");
    let n = u64::from_le_bytes(take::<8>(bytes, pos)) as usize;
    out.push('[');
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        write_json(bytes, pos, item, out);
    }
    out.push(']');
}

fn take<const N: usize>(bytes: &[u8], pos: &mut usize) -> [u8; N] {
    let out = bytes[*pos..*pos + N].try_into().expect("N bytes");
    *pos += N;
    out
}

fn read_scalar(bytes: &[u8], pos: &mut usize, value_type: ValueType) -> Value {
    use ValueType::*;
    match value_type {
        U8 => Value::UInt(u64::from(take::<1>(bytes, pos)[0])),
        I8 => Value::Int(i64::from(i8::from_le_bytes(take(bytes, pos)))),
        Bool => Value::Bool(take::<1>(bytes, pos)[0] != 0),
        U16 => Value::UInt(u64::from(u16::from_le_bytes(take(bytes, pos)))),
        I16 => Value::Int(i64::from(i16::from_le_bytes(take(bytes, pos)))),
        U32 => Value::UInt(u64::from(u32::from_le_bytes(take(bytes, pos)))),
        I32 => Value::Int(i64::from(i32::from_le_bytes(take(bytes, pos)))),
        F32 => Value::Float32(f32::from_le_bytes(take(bytes, pos))),
        U64 => Value::UInt(u64::from_le_bytes(take(bytes, pos))),
        I64 => Value::Int(i64::from_le_bytes(take(bytes, pos))),
        F64 => Value::Float(f64::from_le_bytes(take(bytes, pos))),
        String => {
            let len = u64::from_le_bytes(take(bytes, pos)) as usize;
            let text = std::string::String::from_utf8_lossy(&bytes[*pos..*pos + len]).into_owned();
            *pos += len;
            Value::String(text)
        }
        Array => unreachable!("arrays are written by write_json"),
    }
}

fn not_gguf(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::NotGguf {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf_write::{MetaValue, TensorToWrite, write_gguf};

    fn ty(name: &str) -> GgmlType {
        GgmlType::from_name(name).unwrap()
    }

    fn sample() -> Vec<u8> {
        let weights: Vec<u8> = (0..6u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let q8 = vec![7u8; 34 * 2];
        let metadata = vec![
            (
                "general.architecture".to_string(),
                MetaValue::String("llama".into()),
            ),
            ("general.alignment".to_string(), MetaValue::U32(64)),
            ("x.f".to_string(), MetaValue::F32(0.5)),
            ("x.neg".to_string(), MetaValue::I8(-3)),
            ("x.flag".to_string(), MetaValue::Bool(true)),
            (
                "x.tokens".to_string(),
                MetaValue::Array(
                    ValueType::String,
                    vec![
                        MetaValue::String("a\"b".into()),
                        MetaValue::String("ü".into()),
                    ],
                ),
            ),
            (
                "x.nested".to_string(),
                MetaValue::Array(
                    ValueType::Array,
                    vec![MetaValue::Array(
                        ValueType::U16,
                        vec![MetaValue::U16(1), MetaValue::U16(2)],
                    )],
                ),
            ),
        ];
        let tensors = [
            TensorToWrite {
                name: "w",
                ggml_type: ty("F32"),
                dims: vec![3, 2],
                data: &weights,
            },
            TensorToWrite {
                name: "q",
                ggml_type: ty("Q8_0"),
                dims: vec![32, 2],
                data: &q8,
            },
        ];
        let mut out = Vec::new();
        write_gguf(&mut out, &metadata, &tensors).unwrap();
        out
    }

    fn err(bytes: &[u8]) -> String {
        read_header(Path::new("m.gguf"), bytes)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_written_file_reads_back() {
        let bytes = sample();
        let h = read_header(Path::new("m.gguf"), &bytes).unwrap();
        assert_eq!((h.version, h.alignment), (3, 64));
        assert_eq!(h.data_start % 64, 0);
        let w = &h.tensors[0];
        assert_eq!(
            (w.name.as_str(), w.shape.as_slice(), w.len),
            ("w", &[2, 3][..], 24)
        );
        assert_eq!(&bytes[w.start..w.start + 4], &0f32.to_le_bytes());
        let q = &h.tensors[1];
        assert_eq!((q.ggml_type.name, q.offset, q.len), ("Q8_0", 64, 68));
        let file_json = |key: &str| {
            let e = h.metadata.iter().find(|e| e.key == key).unwrap();
            value_json(&bytes, e)
        };
        assert_eq!(file_json("general.architecture"), "\"llama\"");
        assert_eq!(file_json("x.f"), "0.5");
        assert_eq!(file_json("x.neg"), "-3");
        assert_eq!(file_json("x.flag"), "true");
        assert_eq!(file_json("x.tokens"), r#"["a\"b","ü"]"#);
        assert_eq!(file_json("x.nested"), "[[1,2]]");
    }

    /// The sample with `at..at + old.len()` replaced.
    fn patched(find: &[u8], new: &[u8]) -> Vec<u8> {
        let mut bytes = sample();
        let at = bytes
            .windows(find.len())
            .position(|w| w == find)
            .unwrap_or_else(|| panic!("{find:?} not in the sample"));
        bytes.splice(at..at + find.len(), new.iter().copied());
        bytes
    }

    #[test]
    fn corrupt_headers_are_refused_naming_what_is_wrong() {
        let bytes = sample();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"GGML".iter().chain(&bytes[4..]).copied().collect(),
                "the magic is",
            ),
            (
                patched(b"GGUF\x03\0\0\0", b"GGUF\x01\0\0\0"),
                "version 1 is not supported",
            ),
            (
                bytes[..20].to_vec(),
                "the tensor count is 2, more than the 4 bytes left",
            ),
            (
                bytes[..10].to_vec(),
                "the tensor count needs 8 bytes but the file has 2 left",
            ),
            (
                patched(
                    b"\x02\0\0\0\0\0\0\0\x07\0\0\0",
                    b"\xff\xff\xff\xff\xff\xff\xff\x7f\x07\0\0\0",
                ),
                "the tensor count is 9223372036854775807, more than the",
            ),
            (
                patched(
                    b"\x14\0\0\0\0\0\0\0general.architecture",
                    b"\xff\xff\xff\xff\0\0\0\0general.architecture",
                ),
                "the length of the key of metadata entry 0 is 4294967295, more than",
            ),
            (
                patched(
                    b"general.architecture\x08\0\0\0",
                    b"general.architecture\x0d\0\0\0",
                ),
                "metadata key 'general.architecture': unknown value type 13",
            ),
            (
                patched(b"\x05\0\0\0\0\0\0\0x.neg", b"\x03\0\0\0\0\0\0\0x.f"),
                "appears twice",
            ),
            (
                patched(b"x.flag\x07\0\0\0\x01", b"x.flag\x07\0\0\0\x02"),
                "a BOOL is 2",
            ),
            (
                patched(b"\x06\0\0\0\0\0\0\0x.flag", b"\x06\0\0\0\0\0\0\0x\xffflag"),
                "is not UTF-8",
            ),
            (
                patched(
                    b"general.alignment\x04\0\0\0\x40\0\0\0",
                    b"general.alignment\x04\0\0\0\x30\0\0\0",
                ),
                "metadata key 'general.alignment': 48 is not a power of two",
            ),
            (
                patched(
                    b"general.alignment\x04\0\0\0\x40\0\0\0",
                    b"general.alignment\x05\0\0\0\x40\0\0\0",
                ),
                "must be a UINT32, not INT32",
            ),
            (
                patched(
                    b"\x01\0\0\0\0\0\0\0q\x02\0\0\0",
                    b"\x01\0\0\0\0\0\0\0w\x02\0\0\0",
                ),
                "tensor 'w': the name appears twice",
            ),
            (
                patched(
                    b"\x01\0\0\0\0\0\0\0q\x02\0\0\0",
                    b"\x01\0\0\0\0\0\0\0q\x05\0\0\0",
                ),
                "tensor 'q': 5 dimensions",
            ),
            (
                patched(
                    b"\x01\0\0\0\0\0\0\0q\x02\0\0\0",
                    b"\x01\0\0\0\0\0\0\0q\0\0\0\0",
                ),
                "tensor 'q': 0 dimensions",
            ),
            (
                patched(
                    b"\x20\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\x08\0\0\0",
                    b"\x20\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\x04\0\0\0",
                ),
                "tensor 'q': unknown ggml type 4",
            ),
            (
                patched(
                    b"\x20\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\x08\0\0\0",
                    b"\x21\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\x08\0\0\0",
                ),
                "its first dimension 33 is not a multiple of Q8_0's block of 32 values",
            ),
            (
                patched(
                    b"\x20\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\x08\0\0\0",
                    b"\x20\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x80\x08\0\0\0",
                ),
                "overflow",
            ),
            (
                patched(
                    b"\x08\0\0\0\x40\0\0\0\0\0\0\0",
                    b"\x08\0\0\0\x41\0\0\0\0\0\0\0",
                ),
                "offset 65 is not a multiple of the alignment 64",
            ),
            (
                patched(
                    b"\x08\0\0\0\x40\0\0\0\0\0\0\0",
                    b"\x08\0\0\0\0\x01\0\0\0\0\0\0",
                ),
                "run past the end of the file",
            ),
            (
                patched(
                    b"\x08\0\0\0\x40\0\0\0\0\0\0\0",
                    b"\x08\0\0\0\0\0\0\0\0\0\0\0",
                ),
                "its bytes overlap those of tensor",
            ),
            (bytes[..bytes.len() - 70].to_vec(), "tensor 'q'"),
            (
                patched(
                    b"\x20\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\x08\0\0\0",
                    b"\x20\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x08\0\0\0",
                ),
                "tensor 'q': dimension 1 of [32, 0] is 0",
            ),
        ];
        for (i, (bad, want)) in cases.iter().enumerate() {
            let e = err(bad);
            assert!(e.contains(want), "case {i}: {e:?} lacks {want:?}");
            assert!(e.starts_with("m.gguf: "), "case {i}: {e}");
        }
    }

    #[test]
    fn the_newest_types_and_the_retired_ids() {
        let nvfp4 = GgmlType::from_id(40).unwrap();
        assert_eq!(
            (nvfp4.name, nvfp4.block_values, nvfp4.block_bytes),
            ("NVFP4", 64, 36)
        );
        let q1_0 = GgmlType::from_name("q1_0").unwrap();
        assert_eq!(
            (q1_0.id, q1_0.block_values, q1_0.block_bytes),
            (41, 128, 18)
        );
        assert_eq!(nvfp4.bytes_of(128), Some(72));
        assert_eq!(nvfp4.bytes_of(96), None);
        for retired_or_unknown in [4, 5, 31, 32, 33, 36, 37, 38, 42] {
            assert_eq!(
                GgmlType::from_id(retired_or_unknown),
                None,
                "{retired_or_unknown}"
            );
        }
    }

    #[test]
    fn floats_print_as_their_own_width_gives_them() {
        let metadata = [
            ("f32".to_string(), MetaValue::F32(0.1)),
            ("f64".to_string(), MetaValue::F64(0.1)),
            ("nan".to_string(), MetaValue::F32(f32::NAN)),
            (
                "list".to_string(),
                MetaValue::Array(
                    ValueType::F32,
                    vec![MetaValue::F32(0.3), MetaValue::F32(f32::INFINITY)],
                ),
            ),
        ];
        let mut bytes = Vec::new();
        write_gguf(&mut bytes, &metadata, &[]).unwrap();
        let h = read_header(Path::new("m.gguf"), &bytes).unwrap();
        let json: Vec<String> = h.metadata.iter().map(|e| value_json(&bytes, e)).collect();
        assert_eq!(json, ["0.1", "0.1", "\"NaN\"", "[0.3,\"inf\"]"]);
    }

    #[test]
    fn arrays_nested_too_deep_are_refused() {
        let mut value = MetaValue::U8(1);
        for _ in 0..9 {
            let t = value.value_type();
            value = MetaValue::Array(t, vec![value]);
        }
        let mut out = Vec::new();
        write_gguf(&mut out, &[("deep".into(), value)], &[]).unwrap();
        assert!(
            err(&out).contains("arrays nest deeper than 8 levels"),
            "{}",
            err(&out)
        );
    }

    #[test]
    fn every_prefix_of_a_file_is_refused_or_read_without_panic() {
        let bytes = sample();
        for n in 0..bytes.len() {
            let _ = read_header(Path::new("m.gguf"), &bytes[..n]);
        }
    }
}
