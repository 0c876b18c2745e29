//! The calibration file (`--calibration`, Parquet): its bytes written to a temporary file,
//! checked by the footer check `arrowquant quantize` runs before DataFusion opens it
//! (`parquet_file::check`), then, when it passes, every row read back through the parquet
//! crate's Arrow reader (the page decoders and codecs DataFusion's scan uses). A panic inside
//! the decoders is caught, as the engine catches it around every read (`guard::catch_panics`),
//! so what this target finds is what the engine cannot survive: an abort, an allocation sized
//! by an untrusted number, a hang, a panic of our own check.

#![no_main]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use arrowquant_formats::panics;
use arrowquant_formats::parquet_file;
use libfuzzer_sys::fuzz_target;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

static FILE: LazyLock<PathBuf> = LazyLock::new(|| {
    // Under the folder scripts/fuzz.sh gives (and removes), else on tmpfs where there is one.
    let base = if let Some(dir) = std::env::var_os("ARROWQUANT_FUZZ_TMP") {
        PathBuf::from(dir)
    } else if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!(
        "arrowquant-fuzz-calibration-{}.parquet",
        std::process::id()
    ))
});

/// Every row of the file, as the scan reads them: rows or an error.
fn read_rows(path: &Path) -> Result<usize, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(1024).build())
        .map_err(|e| e.to_string())?;
    let mut rows = 0;
    for batch in reader {
        rows += batch.map_err(|e| e.to_string())?.num_rows();
    }
    Ok(rows)
}

fuzz_target!(|data: &[u8]| {
    let path = &*FILE;
    std::fs::write(path, data).unwrap();
    match parquet_file::check(path) {
        Ok(()) => {
            let _ = panics::catch(|| read_rows(path));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
