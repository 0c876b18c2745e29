//! The check a Parquet file passes before a query reads it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use parquet::file::metadata::ParquetMetaDataReader;

use crate::error::ModelError;
use crate::input::file_kind;

/// Checks that `path` is a Parquet file whose footer the parquet crate decodes: the magic at
/// both ends, a footer length that fits the file, and the metadata decoded (a panic of the
/// decoder caught and said). Corruption in the data pages only shows while the pages are read.
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
    match crate::panics::catch(|| ParquetMetaDataReader::new().parse_and_finish(&file)) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(bad(format!("corrupt footer: {e}"))),
        Err(panic) => Err(bad(format!(
            "internal error in the footer decoder: {panic}"
        ))),
    }
}
