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
