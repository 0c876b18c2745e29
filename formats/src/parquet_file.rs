//! The check a Parquet file passes before a query reads it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData, ParquetMetaDataReader};

use crate::error::ModelError;
use crate::input::file_kind;
use crate::thrift_compact::{self, HeaderError};

/// The most bytes one page may decompress to. The parquet crate reserves a page's declared
/// size before decompressing it (apache/arrow-rs#10734), so a header of a few bytes could ask
/// for 2 GiB; writers cut pages at about 1 MiB.
pub const MAX_PAGE_BYTES: i64 = 256 << 20;

/// The most bytes a page header may take (writers cut statistics to a few dozen bytes).
const MAX_HEADER_BYTES: usize = 16 << 20;

/// Checks that `path` is a Parquet file whose footer the parquet crate decodes: the magic at
/// both ends, a footer length that fits the file, the footer's Thrift structure walked (every
/// count and length within the footer), the metadata decoded (a panic of the decoder caught and
/// said), and every page header of every column chunk: inside its chunk, with sizes
/// that are not negative and a decompressed size within its chunk's and [`MAX_PAGE_BYTES`].
/// Corruption inside the pages' data only shows while they are decoded.
pub fn check(path: &Path) -> Result<(), ModelError> {
    let bad = |reason: String| ModelError::NotParquet {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if !meta.is_file() {
        return Err(bad(format!("not a regular file ({})", file_kind(&meta))));
    }
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let size = meta.len();
    // "PAR1", the data, the footer, its 4-byte length and "PAR1".
    if size < 12 {
        return Err(bad(format!(
            "{size} bytes is too short for the 12 bytes of magic and footer length"
        )));
    }
    let mut head = [0u8; 4];
    let mut tail = [0u8; 8];
    file.read_exact_at(&mut head, 0)
        .and_then(|_| file.read_exact_at(&mut tail, size - 8))
        .map_err(|e| ModelError::io(path, e))?;
    if &head != b"PAR1" || &tail[4..] != b"PAR1" {
        return Err(bad("no PAR1 magic at both ends".into()));
    }
    let footer = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer == 0 || footer > size - 12 {
        return Err(bad(format!(
            "footer length {footer} does not fit in the file ({size} bytes)"
        )));
    }
    // Walked first: the decoder reserves every list's declared length before reading it.
    let mut footer_bytes = vec![0u8; footer as usize];
    file.read_exact_at(&mut footer_bytes, size - 8 - footer)
        .map_err(|e| ModelError::io(path, e))?;
    match thrift_compact::walk_footer(&footer_bytes) {
        Ok(_) => {}
        Err(HeaderError::Truncated) => {
            return Err(bad(
                "corrupt footer: a length or count runs past the footer's end".into(),
            ));
        }
        Err(HeaderError::Invalid(reason)) => return Err(bad(format!("corrupt footer: {reason}"))),
    }
    let metadata =
        match crate::panics::catch(|| ParquetMetaDataReader::new().parse_and_finish(&file)) {
            Ok(Ok(metadata)) => metadata,
            Ok(Err(e)) => return Err(bad(format!("corrupt footer: {e}"))),
            Err(panic) => {
                return Err(bad(format!(
                    "internal error in the footer decoder: {panic}"
                )));
            }
        };
    check_pages(&file, &metadata, size).map_err(bad)
}

/// Walks the page headers of every column chunk, as the page reader will.
fn check_pages(file: &File, metadata: &ParquetMetaData, size: u64) -> Result<(), String> {
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for column in group.columns() {
            check_chunk(file, column, size)
                .map_err(|e| format!("row group {g}, column '{}': {e}", column.column_path()))?;
        }
    }
    Ok(())
}

fn check_chunk(file: &File, column: &ColumnChunkMetaData, size: u64) -> Result<(), String> {
    let start = column
        .dictionary_page_offset()
        .unwrap_or(column.data_page_offset());
    let len = column.compressed_size();
    let total_uncompressed = column.uncompressed_size();
    if start < 0 || len < 0 || total_uncompressed < 0 {
        return Err(format!(
            "negative offset or size in the footer (start {start}, {len} bytes, {total_uncompressed} uncompressed)"
        ));
    }
    let (start, len) = (start as u64, len as u64);
    let end = start
        .checked_add(len)
        .filter(|&end| end <= size)
        .ok_or_else(|| format!("bytes {start}..+{len} run past the file ({size} bytes)"))?;
    let limit = total_uncompressed.min(MAX_PAGE_BYTES);
    let mut pos = start;
    let mut buffer = Vec::new();
    let mut page = 0usize;
    while pos < end {
        let at = |e: String| format!("page {page} at byte {pos}: {e}");
        let sizes = read_header(file, pos, end, &mut buffer).map_err(at)?;
        if sizes.compressed < 0 || sizes.uncompressed < 0 {
            return Err(at(format!(
                "negative page size ({} compressed, {} uncompressed)",
                sizes.compressed, sizes.uncompressed
            )));
        }
        if sizes.uncompressed > limit {
            let bound = if limit == MAX_PAGE_BYTES {
                format!("the limit of {MAX_PAGE_BYTES} bytes a page")
            } else {
                format!("its column chunk's {total_uncompressed} bytes")
            };
            return Err(at(format!(
                "declares {} bytes decompressed, more than {bound}",
                sizes.uncompressed
            )));
        }
        let next = pos + sizes.header_len as u64 + sizes.compressed as u64;
        if next > end {
            return Err(at(format!(
                "its {} bytes run past the column chunk's end at byte {end}",
                sizes.compressed
            )));
        }
        pos = next;
        page += 1;
    }
    Ok(())
}

/// The header of the page at `pos`, read in windows that grow until it fits.
fn read_header(
    file: &File,
    pos: u64,
    end: u64,
    buffer: &mut Vec<u8>,
) -> Result<thrift_compact::PageSizes, String> {
    let available = usize::try_from(end - pos).unwrap_or(usize::MAX);
    let mut window = 256usize;
    loop {
        let n = window.min(available).min(MAX_HEADER_BYTES);
        buffer.resize(n, 0);
        file.read_exact_at(buffer, pos)
            .map_err(|e| format!("cannot read: {e}"))?;
        match thrift_compact::read(buffer) {
            Ok(sizes) => return Ok(sizes),
            Err(HeaderError::Invalid(reason)) => return Err(format!("bad page header: {reason}")),
            Err(HeaderError::Truncated) if n == available => {
                return Err("the page header runs past its column chunk".into());
            }
            Err(HeaderError::Truncated) if n == MAX_HEADER_BYTES => {
                return Err(format!("a page header over {MAX_HEADER_BYTES} bytes"));
            }
            Err(HeaderError::Truncated) => window = n * 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    use super::*;

    /// A fresh folder under the system's temporary directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "arrowquant-parquet-check-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, bytes: &[u8]) -> PathBuf {
            let path = self.0.join("file.parquet");
            std::fs::write(&path, bytes).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn refusal(path: &Path) -> String {
        check(path).unwrap_err().to_string()
    }

    #[test]
    fn a_written_parquet_file_passes() {
        let scratch = Scratch::new("valid");
        let path = scratch.0.join("valid.parquet");
        let schema = Arc::new(parse_message_type("message m { required int32 a; }").unwrap());
        let file = File::create(&path).unwrap();
        let props = Arc::new(WriterProperties::builder().build());
        // No row groups: the footer alone is what the check reads.
        SerializedFileWriter::new(file, schema, props)
            .unwrap()
            .close()
            .unwrap();
        check(&path).unwrap();
    }

    #[test]
    fn a_file_with_compressed_pages_passes() {
        use parquet::basic::{Compression, ZstdLevel};
        use parquet::data_type::Int32Type;
        let scratch = Scratch::new("pages");
        let path = scratch.0.join("pages.parquet");
        let schema = Arc::new(parse_message_type("message m { required int32 a; }").unwrap());
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_data_page_size_limit(1024)
            .set_write_batch_size(256)
            .build();
        let mut writer =
            SerializedFileWriter::new(File::create(&path).unwrap(), schema, Arc::new(props))
                .unwrap();
        for _ in 0..2 {
            let mut group = writer.next_row_group().unwrap();
            let mut column = group.next_column().unwrap().unwrap();
            let values: Vec<i32> = (0..10_000).collect();
            column
                .typed::<Int32Type>()
                .write_batch(&values, None, None)
                .unwrap();
            column.close().unwrap();
            group.close().unwrap();
        }
        writer.close().unwrap();
        check(&path).unwrap();
    }

    #[test]
    fn files_datafusion_wrote_pass() {
        // The calibration fuzz target's seeds, written by DataFusion (lists, nulls, dictionary pages).
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/calibration");
        let mut checked = 0;
        for entry in std::fs::read_dir(&seeds).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "parquet") {
                check(&path).unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
        assert!(checked >= 4, "{checked} seed files in {}", seeds.display());
    }

    #[test]
    fn a_page_declaring_more_than_its_chunk_is_refused() {
        // Found by the calibration fuzz target: a page header of a few bytes declaring 671 MB
        // decompressed, which the parquet crate would reserve before decompressing.
        let scratch = Scratch::new("page-size");
        let path = scratch.file(include_bytes!(
            "../../fuzz/artifacts-found/calibration-oom-page-size"
        ));
        let text = refusal(&path);
        assert!(
            text.contains("row group 0, column '")
                && text.contains("bytes decompressed, more than"),
            "{text}"
        );
    }

    #[test]
    fn a_footer_list_longer_than_the_footer_is_refused() {
        // Found by the calibration fuzz target: a footer whose row-group list claims millions of
        // entries, which the parquet crate would reserve (574 MB) before reading one.
        let scratch = Scratch::new("footer-count");
        let path = scratch.file(include_bytes!(
            "../../fuzz/artifacts-found/calibration-oom-row-group-count"
        ));
        let text = refusal(&path);
        assert!(text.contains("corrupt footer"), "{text}");
    }

    #[test]
    fn a_schema_element_with_more_children_than_the_schema_is_refused() {
        // Found by the calibration fuzz target: num_children of 457 million, which the parquet
        // crate would reserve (3.6 GB) while building the schema.
        let scratch = Scratch::new("schema-children");
        let path = scratch.file(include_bytes!(
            "../../fuzz/artifacts-found/calibration-oom-schema-children"
        ));
        let text = refusal(&path);
        assert!(text.contains("corrupt footer: schema element"), "{text}");
    }

    #[test]
    fn each_kind_of_corruption_is_named() {
        let scratch = Scratch::new("corrupt");
        let too_short = scratch.file(b"PAR1PAR1");
        assert!(
            refusal(&too_short).ends_with(
                "not a readable Parquet file: 8 bytes is too short for the 12 bytes of magic and footer length"
            ),
            "{}",
            refusal(&too_short)
        );
        let no_magic = scratch.file(&[7; 64]);
        assert!(refusal(&no_magic).ends_with("no PAR1 magic at both ends"));

        let mut lying = b"PAR1".to_vec();
        lying.extend_from_slice(&[0; 8]);
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        lying.extend_from_slice(b"PAR1");
        let lying = scratch.file(&lying);
        assert!(
            refusal(&lying)
                .ends_with("footer length 4294967295 does not fit in the file (20 bytes)"),
            "{}",
            refusal(&lying)
        );

        let mut garbage = b"PAR1".to_vec();
        garbage.extend_from_slice(&[0xa5; 24]);
        garbage.extend_from_slice(&20u32.to_le_bytes());
        garbage.extend_from_slice(b"PAR1");
        let garbage = scratch.file(&garbage);
        let text = refusal(&garbage);
        assert!(
            text.starts_with(&format!(
                "{}: not a readable Parquet file: ",
                garbage.display()
            )) && (text.contains("corrupt footer") || text.contains("internal error")),
            "{text}"
        );
    }

    #[test]
    fn what_is_not_a_file_is_named() {
        let scratch = Scratch::new("kinds");
        assert!(
            refusal(&scratch.0)
                .ends_with("not a readable Parquet file: not a regular file (a directory)"),
            "{}",
            refusal(&scratch.0)
        );
        let missing = scratch.0.join("missing.parquet");
        assert!(refusal(&missing).ends_with("no such file or directory"));
    }
}
