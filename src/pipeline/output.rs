//! The output directory, written under a temporary name beside its destination and renamed into
//! place when complete: a run that fails or is interrupted leaves no directory that looks
//! finished, and never touches the input.

use std::fs::File;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;

/// Row groups are cut at about this many bytes so readers can stream the file.
const ROW_GROUP_BYTES: usize = 64 << 20;

/// A directory being written; removed on drop unless committed.
#[derive(Debug)]
pub struct PartialDir {
    path: PathBuf,
    destination: PathBuf,
    committed: bool,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> DataFusionError {
    DataFusionError::Execution(format!("{what} {}: {e}", path.display()))
}

impl PartialDir {
    /// Checks the destination and creates `.NAME.partial-PID` beside it.
    pub fn create(destination: &Path, input: &Path, force: bool) -> Result<Self> {
        let name = destination
            .file_name()
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "output path {} has no directory name",
                    destination.display()
                ))
            })?
            .to_string_lossy()
            .into_owned();
        if let (Ok(out), Ok(inp)) = (destination.canonicalize(), input.canonicalize())
            && (out == inp || inp.starts_with(&out))
        {
            return Err(DataFusionError::Plan(format!(
                "output {} would replace the input model {}",
                destination.display(),
                input.display()
            )));
        }
        if destination.exists() && !force {
            return Err(DataFusionError::Plan(format!(
                "output {} already exists (use --force to replace it)",
                destination.display()
            )));
        }
        let parent = match destination.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| io_error("cannot create", &parent, e))?;
        let path = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| io_error("cannot remove", &path, e))?;
        }
        std::fs::create_dir(&path).map_err(|e| io_error("cannot create", &path, e))?;
        Ok(PartialDir {
            path,
            destination: destination.to_path_buf(),
            committed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Renames the finished directory into place (replacing an old one, for `--force`).
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.destination.exists() {
            let old = self.path.with_extension("replaced");
            std::fs::rename(&self.destination, &old)
                .map_err(|e| io_error("cannot move aside", &self.destination, e))?;
            std::fs::rename(&self.path, &self.destination)
                .map_err(|e| io_error("cannot rename into place", &self.path, e))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.path, &self.destination)
                .map_err(|e| io_error("cannot rename into place", &self.path, e))?;
        }
        self.committed = true;
        Ok(self.destination.clone())
    }
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Writer settings for the quantized table: no compression, dictionaries only for the
/// repetitive string columns and statistics only for `layer` and `row` (packed codes, scales
/// and raw bytes neither repeat nor prune; hashing and comparing them would cost more than it
/// saves), row groups flushed by size.
fn weights_properties() -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_max_row_group_row_count(Some(1 << 20));
    for column in [vec!["layer"], vec!["dtype"], vec!["q", "scheme"]] {
        let path = ColumnPath::new(column.into_iter().map(str::to_string).collect());
        props = props.set_column_dictionary_enabled(path, true);
    }
    // Statistics only where a reader can prune with them: which tensors and rows a row group
    // holds.
    for column in [vec!["layer"], vec!["row"]] {
        let path = ColumnPath::new(column.into_iter().map(str::to_string).collect());
        props = props.set_column_statistics_enabled(path, EnabledStatistics::Chunk);
    }
    props.build()
}

/// A Parquet file written batch by batch, flushing a row group every [`ROW_GROUP_BYTES`].
pub struct TableWriter {
    writer: ArrowWriter<File>,
    path: PathBuf,
}

impl TableWriter {
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self> {
        let file = File::create(path).map_err(|e| io_error("cannot create", path, e))?;
        let writer = ArrowWriter::try_new(file, schema, Some(weights_properties()))?;
        Ok(TableWriter {
            writer,
            path: path.to_path_buf(),
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch)?;
        if self.writer.in_progress_size() > ROW_GROUP_BYTES {
            self.writer.flush()?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<PathBuf> {
        let file = self.writer.into_inner()?;
        file.sync_all()
            .map_err(|e| io_error("cannot sync", &self.path, e))?;
        Ok(self.path)
    }
}

/// Writes a small table in one go.
pub fn write_table(path: &Path, batches: &[RecordBatch], schema: SchemaRef) -> Result<()> {
    let mut writer = TableWriter::create(path, schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(())
}

/// Writes text to a file and syncs it.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = File::create(path).map_err(|e| io_error("cannot create", path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| io_error("cannot write", path, e))
}
