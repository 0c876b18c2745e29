//! Writing GGUF files (version 3): metadata, tensor infos with offsets laid out at the file's
//! alignment, then the tensors' bytes, each padded to the alignment as llama.cpp expects them
//! (it requires every tensor at the offset the previous ones' padded sizes give). Sizes follow
//! from types and dimensions, so the header is written first and the data streamed after it
//! ([`GgufWriter`]): a model is never held in memory to be written.

use std::io::{self, Write};

use crate::gguf_file::{DEFAULT_ALIGNMENT, GgmlType, MAX_DIMS, ValueType};

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

/// A tensor's entry in the header, written before its bytes: name, type and dimensions
/// innermost first (ggml's `ne`). Its size follows from them.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    pub dims: Vec<u64>,
}

impl TensorInfo {
    /// The bytes its type and dimensions give; `None` when the values are not whole blocks or
    /// the size overflows.
    pub fn bytes(&self) -> Option<u64> {
        let elements = self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        self.ggml_type.bytes_of(elements)
    }
}

/// llama.cpp's limit on a tensor name (`GGML_MAX_NAME`, terminating NUL included): its GGUF
/// loader refuses a name of 64 bytes or more.
pub const MAX_NAME_BYTES: usize = 63;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

/// The data section's alignment the metadata asks for: `general.alignment` as a UINT32
/// (given as a value or copied encoded), else 32. Zero is refused: every offset would be 0.
pub fn alignment_of(metadata: &[(String, MetaValue)]) -> io::Result<u64> {
    let Some((_, value)) = metadata.iter().find(|(k, _)| k == "general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let alignment = match value {
        MetaValue::U32(a) => Some(*a),
        MetaValue::Raw(ValueType::U32, bytes) => <[u8; 4]>::try_from(bytes.as_slice())
            .ok()
            .map(u32::from_le_bytes),
        _ => None,
    };
    match alignment {
        Some(a) if a > 0 => Ok(u64::from(a)),
        _ => Err(invalid(format!(
            "general.alignment must be a UINT32 above 0, not {value:?}"
        ))),
    }
}

/// A GGUF file written front to back: the header (metadata, then every tensor's info with the
/// offset its predecessors' padded sizes give) at creation, then each tensor's bytes in the
/// order of the infos, in as many pieces as the caller likes. Every tensor must get exactly the
/// bytes its type and dimensions take: a piece that would overrun its tensor, a tensor left
/// short, or bytes for a tensor out of order are `InvalidInput` errors naming the tensor.
pub struct GgufWriter<W: Write> {
    out: W,
    alignment: u64,
    /// (name, declared bytes) of every tensor, in order.
    tensors: Vec<(String, u64)>,
    /// The tensor being written, and how many of its bytes are written.
    current: usize,
    written: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Checks the infos (sizes, names, dimensions), writes the header padded to the alignment,
    /// and returns a writer waiting for the first tensor's bytes.
    pub fn new(
        mut out: W,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorInfo],
    ) -> io::Result<Self> {
        let alignment = alignment_of(metadata)?;
        let mut keys = std::collections::HashSet::new();
        for (key, _) in metadata {
            if !keys.insert(key.as_str()) {
                return Err(invalid(format!("metadata key '{key}' is given twice")));
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut sizes = Vec::with_capacity(tensors.len());
        for t in tensors {
            if !names.insert(t.name.as_str()) {
                return Err(invalid(format!("tensor '{}' is given twice", t.name)));
            }
            if t.name.len() > MAX_NAME_BYTES {
                return Err(invalid(format!(
                    "tensor '{}': its name is {} bytes, over the {MAX_NAME_BYTES} llama.cpp loads",
                    t.name,
                    t.name.len()
                )));
            }
            if t.dims.is_empty() || t.dims.len() > MAX_DIMS {
                return Err(invalid(format!(
                    "tensor '{}': {} dimensions, but GGUF takes 1 to {MAX_DIMS}",
                    t.name,
                    t.dims.len()
                )));
            }
            // Our reader refuses them too: a zero lets the others' product overflow unseen.
            if let Some(axis) = t.dims.iter().position(|&d| d == 0) {
                return Err(invalid(format!(
                    "tensor '{}': dimension {axis} of {:?} is 0 (GGUF tensors hold values)",
                    t.name, t.dims
                )));
            }
            let Some(bytes) = t.bytes() else {
                return Err(invalid(format!(
                    "tensor '{}': dimensions {:?} are not whole {} blocks of {} values",
                    t.name, t.dims, t.ggml_type.name, t.ggml_type.block_values
                )));
            };
            sizes.push(bytes);
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
        for (t, &bytes) in tensors.iter().zip(&sizes) {
            put_string(&mut head, t.name.as_bytes());
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.id.to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = offset
                .checked_add(bytes)
                .map(|end| end.next_multiple_of(alignment))
                .ok_or_else(|| invalid("the tensors' sizes overflow 64 bits".into()))?;
        }
        let padded = (head.len() as u64).next_multiple_of(alignment) as usize;
        head.resize(padded, 0);
        out.write_all(&head)?;
        Ok(GgufWriter {
            out,
            alignment,
            tensors: tensors.iter().map(|t| t.name.clone()).zip(sizes).collect(),
            current: 0,
            written: 0,
        })
    }

    /// Appends `bytes` to tensor `name`, which must be the tensor being written, or the next
    /// one once the current one is complete.
    pub fn write_tensor_bytes(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let Some((current, size)) = self.tensors.get(self.current) else {
            return Err(invalid(format!(
                "tensor '{name}': every declared tensor is already written"
            )));
        };
        if current != name {
            return Err(invalid(format!(
                "tensor '{name}' written while '{current}' is due ({} of its {size} bytes \
                 written)",
                self.written
            )));
        }
        let size = *size;
        let left = size - self.written;
        if bytes.len() as u64 > left {
            return Err(invalid(format!(
                "tensor '{name}': {} more bytes would overrun its {size} bytes ({} written)",
                bytes.len(),
                self.written
            )));
        }
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.written == size {
            self.pad_and_advance()?;
        }
        Ok(())
    }

    /// Pads the completed current tensor to the alignment and moves to the next one.
    fn pad_and_advance(&mut self) -> io::Result<()> {
        let size = self.tensors[self.current].1;
        let mut pad = size.next_multiple_of(self.alignment) - size;
        let zeros = [0u8; 256];
        while pad > 0 {
            let n = pad.min(zeros.len() as u64) as usize;
            self.out.write_all(&zeros[..n])?;
            pad -= n as u64;
        }
        self.current += 1;
        self.written = 0;
        Ok(())
    }

    /// Ends the file: every tensor must be complete. Returns the output, unflushed.
    pub fn finish(self) -> io::Result<W> {
        if let Some((name, size)) = self.tensors.get(self.current) {
            return Err(invalid(format!(
                "tensor '{name}': {} of its {size} bytes written when the file was finished",
                self.written
            )));
        }
        Ok(self.out)
    }
}

/// Writes a whole GGUF file. Every tensor's bytes must be what its type and dimensions give
/// (checked: a mismatch is an `InvalidInput` error naming the tensor, and nothing is written).
/// The alignment is `general.alignment` when the metadata sets it as a UINT32, else 32.
pub fn write_gguf(
    out: &mut impl Write,
    metadata: &[(String, MetaValue)],
    tensors: &[TensorToWrite],
) -> io::Result<()> {
    let infos: Vec<TensorInfo> = tensors
        .iter()
        .map(|t| TensorInfo {
            name: t.name.to_string(),
            ggml_type: t.ggml_type,
            dims: t.dims.clone(),
        })
        .collect();
    for (t, info) in tensors.iter().zip(&infos) {
        let want = info.bytes();
        if want != Some(t.data.len() as u64) {
            return Err(invalid(format!(
                "tensor '{}': {} bytes, but {} of dimensions {:?} takes {want:?}",
                t.name,
                t.data.len(),
                t.ggml_type.name,
                t.dims
            )));
        }
    }
    let mut writer = GgufWriter::new(out, metadata, &infos)?;
    for t in tensors {
        writer.write_tensor_bytes(t.name, t.data)?;
    }
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf_file::read_header;
    use std::path::Path;

    fn info(name: &str, ty: &str, dims: &[u64]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            ggml_type: GgmlType::from_name(ty).unwrap(),
            dims: dims.to_vec(),
        }
    }

    fn infos() -> Vec<TensorInfo> {
        vec![info("a", "F32", &[3, 2]), info("q", "Q8_0", &[32, 2])]
    }

    #[test]
    fn streamed_pieces_give_the_file_write_gguf_gives() {
        let a: Vec<u8> = (0..24u8).collect();
        let q = [9u8; 68];
        let mut whole = Vec::new();
        let tensors: Vec<TensorToWrite> = infos()
            .iter()
            .zip([&a[..], &q[..]])
            .map(|(i, data)| TensorToWrite {
                name: Box::leak(i.name.clone().into_boxed_str()),
                ggml_type: i.ggml_type,
                dims: i.dims.clone(),
                data,
            })
            .collect();
        let metadata = [("general.alignment".to_string(), MetaValue::U32(64))];
        write_gguf(&mut whole, &metadata, &tensors).unwrap();
        let mut w = GgufWriter::new(Vec::new(), &metadata, &infos()).unwrap();
        w.write_tensor_bytes("a", &a[..10]).unwrap();
        w.write_tensor_bytes("a", &a[10..]).unwrap();
        for row in q.chunks(34) {
            w.write_tensor_bytes("q", row).unwrap();
        }
        let streamed = w.finish().unwrap();
        assert_eq!(streamed, whole);
        let h = read_header(Path::new("s.gguf"), &streamed).unwrap();
        assert_eq!(h.alignment, 64);
        assert_eq!(h.tensors[1].offset, 64);
    }

    #[test]
    fn each_tensor_gets_exactly_its_declared_bytes_in_order() {
        let mut w = GgufWriter::new(Vec::new(), &[], &infos()).unwrap();
        let e = w.write_tensor_bytes("q", &[0; 34]).unwrap_err().to_string();
        assert_eq!(
            e,
            "tensor 'q' written while 'a' is due (0 of its 24 bytes written)"
        );
        let e = w.write_tensor_bytes("a", &[0; 25]).unwrap_err().to_string();
        assert_eq!(
            e,
            "tensor 'a': 25 more bytes would overrun its 24 bytes (0 written)"
        );
        w.write_tensor_bytes("a", &[0; 24]).unwrap();
        w.write_tensor_bytes("q", &[0; 34]).unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert_eq!(
            e,
            "tensor 'q': 34 of its 68 bytes written when the file was finished"
        );
        let mut w = GgufWriter::new(Vec::new(), &[], &infos()[..1]).unwrap();
        w.write_tensor_bytes("a", &[0; 24]).unwrap();
        let e = w.write_tensor_bytes("a", &[0]).unwrap_err().to_string();
        assert_eq!(e, "tensor 'a': every declared tensor is already written");
    }

    #[test]
    fn bad_infos_and_metadata_are_refused_before_writing() {
        let refused = |metadata: &[(String, MetaValue)], tensors: &[TensorInfo]| {
            let mut out = Vec::new();
            let e = GgufWriter::new(&mut out, metadata, tensors)
                .err()
                .unwrap()
                .to_string();
            assert!(out.is_empty(), "{e}: something was written");
            e
        };
        assert_eq!(
            refused(&[], &[info("q", "Q8_0", &[20, 2])]),
            "tensor 'q': dimensions [20, 2] are not whole Q8_0 blocks of 32 values"
        );
        assert_eq!(
            refused(&[], &[info("a", "F32", &[1]), info("a", "F32", &[1])]),
            "tensor 'a' is given twice"
        );
        assert_eq!(
            refused(&[], &[info("a", "F32", &[1, 1, 1, 1, 1])]),
            "tensor 'a': 5 dimensions, but GGUF takes 1 to 4"
        );
        assert_eq!(
            refused(&[], &[info("z", "F32", &[4, 0])]),
            "tensor 'z': dimension 1 of [4, 0] is 0 (GGUF tensors hold values)"
        );
        let long = "x".repeat(64);
        assert!(refused(&[], &[info(&long, "F32", &[1])]).contains("its name is 64 bytes"));
        let twice = [
            ("k".to_string(), MetaValue::U8(1)),
            ("k".to_string(), MetaValue::U8(2)),
        ];
        assert_eq!(refused(&twice, &[]), "metadata key 'k' is given twice");
        let zero = [("general.alignment".to_string(), MetaValue::U32(0))];
        assert!(refused(&zero, &[]).contains("general.alignment must be a UINT32 above 0"));
        // Copied encoded from another file, the alignment still counts.
        let raw = [(
            "general.alignment".to_string(),
            MetaValue::Raw(ValueType::U32, 128u32.to_le_bytes().to_vec()),
        )];
        let w = GgufWriter::new(Vec::new(), &raw, &[]).unwrap();
        assert_eq!(w.finish().unwrap().len() % 128, 0);
    }
}
