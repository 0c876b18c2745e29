//! Just enough of Thrift's compact protocol to check a Parquet file's structures before the
//! parquet crate decodes them: walk the footer (every list, map and binary length must fit in
//! the bytes that are left, since the parquet crate reserves a list's declared length before
//! reading its items: apache/arrow-rs#9874), and read a page header's sizes and its own length
//! (it reserves a page's declared decompressed size: apache/arrow-rs#10734).
//!
//! Written here because neither library fits: the parquet crate keeps its Thrift structures
//! private, and the `thrift` crate allocates a binary field's declared length before reading it
//! (an allocation sized by the untrusted bytes this check exists to refuse). This reader walks a
//! byte slice and allocates nothing.

/// What a page header says about the page that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSizes {
    /// Bytes of the header itself.
    pub header_len: usize,
    pub uncompressed: i64,
    pub compressed: i64,
}

/// Why a header could not be read: `Truncated` when `bytes` ends inside it (a longer read may
/// succeed), `Invalid` otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    Truncated,
    Invalid(String),
}

/// Nesting deeper than this is refused (a page header nests three levels).
const MAX_DEPTH: usize = 32;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, HeaderError> {
        let b = *self.bytes.get(self.pos).ok_or(HeaderError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: u64) -> Result<(), HeaderError> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining {
            return Err(HeaderError::Truncated);
        }
        self.pos += n as usize;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, HeaderError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(HeaderError::Invalid("a varint longer than 10 bytes".into()))
    }

    fn zigzag(&mut self) -> Result<i64, HeaderError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// Skips one value of compact type `kind`.
    fn skip_value(&mut self, kind: u8, depth: usize) -> Result<(), HeaderError> {
        if depth > MAX_DEPTH {
            return Err(HeaderError::Invalid(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        match kind {
            // Booleans of a struct field carry their value in the type.
            1 | 2 => Ok(()),
            3 => self.skip(1),
            4..=6 => self.varint().map(|_| ()),
            7 => self.skip(8),
            8 => {
                let len = self.varint()?;
                self.skip(len)
            }
            9 | 10 => {
                let head = self.byte()?;
                let mut count = u64::from(head >> 4);
                if count == 15 {
                    count = self.varint()?;
                }
                self.skip_items(count, head & 0x0f, depth)
            }
            11 => {
                let count = self.varint()?;
                if count == 0 {
                    return Ok(());
                }
                let kinds = self.byte()?;
                for _ in 0..count {
                    self.skip_item(kinds >> 4, depth)?;
                    self.skip_item(kinds & 0x0f, depth)?;
                }
                Ok(())
            }
            12 => self.skip_struct(depth + 1),
            13 => self.skip(16),
            _ => Err(HeaderError::Invalid(format!("unknown field type {kind}"))),
        }
    }

    /// A list element: booleans take a byte each there.
    fn skip_item(&mut self, kind: u8, depth: usize) -> Result<(), HeaderError> {
        if kind == 1 || kind == 2 {
            self.skip(1)
        } else {
            self.skip_value(kind, depth + 1)
        }
    }

    fn skip_items(&mut self, count: u64, kind: u8, depth: usize) -> Result<(), HeaderError> {
        // Every element takes at least a byte: a count beyond the bytes left is refused before
        // the loop runs it.
        if count > (self.bytes.len() - self.pos) as u64 && kind != 0 {
            return Err(HeaderError::Truncated);
        }
        for _ in 0..count {
            self.skip_item(kind, depth)?;
        }
        Ok(())
    }

    /// Field headers of a struct: `(field id, type)`, `None` at its end.
    fn field(&mut self, last_id: &mut i64) -> Result<Option<(i64, u8)>, HeaderError> {
        let head = self.byte()?;
        if head == 0 {
            return Ok(None);
        }
        let delta = i64::from(head >> 4);
        *last_id = if delta == 0 {
            self.zigzag()?
        } else {
            *last_id + delta
        };
        Ok(Some((*last_id, head & 0x0f)))
    }

    /// A list of schema elements, each element's child count checked against the list's.
    fn schema(&mut self) -> Result<(), HeaderError> {
        let head = self.byte()?;
        let mut count = u64::from(head >> 4);
        if count == 15 {
            count = self.varint()?;
        }
        if head & 0x0f != 12 {
            return Err(HeaderError::Invalid(
                "a schema that is not a list of structs".into(),
            ));
        }
        if count > (self.bytes.len() - self.pos) as u64 {
            return Err(HeaderError::Truncated);
        }
        for element in 0..count {
            let mut id = 0;
            while let Some((field, kind)) = self.field(&mut id)? {
                if (field, kind) == (5, 5) {
                    let children = self.zigzag()?;
                    if children < 0 || children as u64 >= count {
                        return Err(HeaderError::Invalid(format!(
                            "schema element {element} claims {children} children among {count} elements"
                        )));
                    }
                } else {
                    self.skip_value(kind, 1)?;
                }
            }
        }
        Ok(())
    }

    fn skip_struct(&mut self, depth: usize) -> Result<(), HeaderError> {
        let mut id = 0;
        while let Some((_, kind)) = self.field(&mut id)? {
            self.skip_value(kind, depth)?;
        }
        Ok(())
    }
}

/// The length of the struct at the start of `bytes` (the footer's `FileMetaData`), walked to its
/// end with every length and count checked against the bytes that are left. Its schema (field
/// 2, a list of `SchemaElement`) is read too: each element's `num_children` (field 5) must be
/// within the number of elements, since the parquet crate reserves that many children.
pub fn walk_footer(bytes: &[u8]) -> Result<usize, HeaderError> {
    let mut r = Reader { bytes, pos: 0 };
    let mut id = 0;
    while let Some((field, kind)) = r.field(&mut id)? {
        if (field, kind) == (2, 9) {
            r.schema()?;
        } else {
            r.skip_value(kind, 0)?;
        }
    }
    Ok(r.pos)
}

/// Reads the page header at the start of `bytes`: fields 2 and 3 of Parquet's `PageHeader`
/// (`uncompressed_page_size`, `compressed_page_size`, both required), every other field skipped.
pub fn read(bytes: &[u8]) -> Result<PageSizes, HeaderError> {
    let mut r = Reader { bytes, pos: 0 };
    let (mut uncompressed, mut compressed) = (None, None);
    let mut id = 0;
    while let Some((field, kind)) = r.field(&mut id)? {
        match (field, kind) {
            (2, 5) => uncompressed = Some(r.zigzag()?),
            (3, 5) => compressed = Some(r.zigzag()?),
            _ => r.skip_value(kind, 0)?,
        }
    }
    match (uncompressed, compressed) {
        (Some(uncompressed), Some(compressed)) => Ok(PageSizes {
            header_len: r.pos,
            uncompressed,
            compressed,
        }),
        _ => Err(HeaderError::Invalid(
            "a page header without its page sizes".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sizes_and_skips_the_rest() {
        // type = 0 (i32), uncompressed = 100, compressed = 60, crc, then a data page header
        // struct (field 5) holding an i32, a binary of 3 bytes, a list of two bools, and STOP.
        let header = [
            0x15, 0x00, // field 1, i32 0
            0x15, 0xc8, 0x01, // field 2, i32 100 (zigzag 200)
            0x15, 0x78, // field 3, i32 60
            0x15, 0x02, // field 4, i32 1
            0x1c, // field 5, struct
            0x15, 0x04, // i32 2
            0x18, 0x03, b'a', b'b', b'c', // binary "abc"
            0x19, 0x21, 0x01, 0x02, // list of 2 bools
            0x00, // end of struct
            0x00, // end of header
            0xff, 0xff, // page data
        ];
        assert_eq!(
            read(&header),
            Ok(PageSizes {
                header_len: header.len() - 2,
                uncompressed: 100,
                compressed: 60
            })
        );
        assert_eq!(read(&header[..9]), Err(HeaderError::Truncated));
    }

    #[test]
    fn walks_a_struct_and_refuses_counts_beyond_its_bytes() {
        // field 1: a list of 3 i32, field 2: binary "ab", STOP; a trailing byte not counted.
        let bytes = [
            0x19, 0x35, 0x02, 0x04, 0x06, 0x18, 0x02, b'a', b'b', 0x00, 0x99,
        ];
        assert_eq!(walk_footer(&bytes), Ok(bytes.len() - 1));
        // A list of 2^21 structs in 6 bytes: refused before a single item is read.
        assert_eq!(
            walk_footer(&[0x19, 0xfc, 0x80, 0x80, 0x80, 0x01]),
            Err(HeaderError::Truncated)
        );
    }

    #[test]
    fn schema_elements_cannot_claim_more_children_than_the_schema_has() {
        // field 2: a list of 2 structs; the first has num_children (field 5) = 1, the second 5.
        let good = [0x29, 0x2c, 0x55, 0x02, 0x00, 0x00, 0x00];
        assert_eq!(walk_footer(&good), Ok(good.len()));
        let bad = [0x29, 0x2c, 0x55, 0x0a, 0x00, 0x00, 0x00];
        assert!(matches!(walk_footer(&bad), Err(HeaderError::Invalid(_))));
    }

    #[test]
    fn refuses_what_cannot_be_a_header() {
        // A binary field claiming 2^32 bytes: truncated, nothing allocated.
        assert_eq!(
            read(&[0x18, 0x80, 0x80, 0x80, 0x80, 0x10]),
            Err(HeaderError::Truncated)
        );
        assert!(matches!(read(&[0x00]), Err(HeaderError::Invalid(_))));
        assert!(matches!(read(&[0x1e, 0x00]), Err(HeaderError::Invalid(_))));
        let deep = [0x1c; 100];
        assert!(matches!(read(&deep), Err(HeaderError::Invalid(_))));
    }
}
