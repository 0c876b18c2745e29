//! Writing GGUF files (version 3): metadata, tensor infos with offsets laid out at the file's
//! alignment, then the tensors' bytes, each padded to the alignment as llama.cpp expects them
//! (it requires every tensor at the offset the previous ones' padded sizes give).

use std::io::{self, Write};

use crate::gguf_file::{DEFAULT_ALIGNMENT, GgmlType, ValueType};

/// A metadata value to write.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// Items all of `ValueType`; nested arrays are `Array` items.
    Array(ValueType, Vec<MetaValue>),
    /// A value already encoded (the bytes after the type tag), as copied from another file.
    Raw(ValueType, Vec<u8>),
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        use MetaValue::*;
        match self {
            U8(_) => ValueType::U8,
            I8(_) => ValueType::I8,
            U16(_) => ValueType::U16,
            I16(_) => ValueType::I16,
            U32(_) => ValueType::U32,
            I32(_) => ValueType::I32,
            F32(_) => ValueType::F32,
            Bool(_) => ValueType::Bool,
            String(_) => ValueType::String,
            U64(_) => ValueType::U64,
            I64(_) => ValueType::I64,
            F64(_) => ValueType::F64,
            Array(..) => ValueType::Array,
            Raw(t, _) => *t,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        use MetaValue::*;
        match self {
            U8(v) => out.push(*v),
            I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Bool(v) => out.push(u8::from(*v)),
            String(s) => put_string(out, s.as_bytes()),
            U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Array(item, items) => {
                out.extend_from_slice(&item.id().to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    v.encode(out);
                }
            }
            Raw(_, bytes) => out.extend_from_slice(bytes),
        }
    }
}

/// A tensor to write: its name, type, dimensions innermost first (ggml's `ne`), and bytes.
#[derive(Debug, Clone)]
pub struct TensorToWrite<'a> {
    pub name: &'a str,
    pub ggml_type: GgmlType,
    pub dims: Vec<u64>,
    pub data: &'a [u8],
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

/// Writes a whole GGUF file. Every tensor's bytes must be what its type and dimensions give
/// (checked: a mismatch is an `InvalidInput` error naming the tensor, and nothing is written).
/// The alignment is `general.alignment` when the metadata sets it as a UINT32, else 32.
pub fn write_gguf(
    out: &mut impl Write,
    metadata: &[(String, MetaValue)],
    tensors: &[TensorToWrite],
) -> io::Result<()> {
    let alignment = metadata
        .iter()
        .find_map(|(k, v)| match (k.as_str(), v) {
            ("general.alignment", MetaValue::U32(a)) => Some(u64::from(*a)),
            _ => None,
        })
        .unwrap_or(DEFAULT_ALIGNMENT);
    for t in tensors {
        let elements = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let want = elements.and_then(|n| t.ggml_type.bytes_of(n));
        if want != Some(t.data.len() as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tensor '{}': {} bytes, but {} of dimensions {:?} takes {want:?}",
                    t.name,
                    t.data.len(),
                    t.ggml_type.name,
                    t.dims
                ),
            ));
        }
    }
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut head, key.as_bytes());
        head.extend_from_slice(&value.value_type().id().to_le_bytes());
        value.encode(&mut head);
    }
    let mut offset = 0u64;
    for t in tensors {
        put_string(&mut head, t.name.as_bytes());
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ggml_type.id.to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + t.data.len() as u64).next_multiple_of(alignment);
    }
    let padded = (head.len() as u64).next_multiple_of(alignment) as usize;
    head.resize(padded, 0);
    out.write_all(&head)?;
    let zeros = vec![0u8; alignment as usize];
    for t in tensors {
        out.write_all(t.data)?;
        let pad = (t.data.len() as u64).next_multiple_of(alignment) - t.data.len() as u64;
        out.write_all(&zeros[..pad as usize])?;
    }
    Ok(())
}
