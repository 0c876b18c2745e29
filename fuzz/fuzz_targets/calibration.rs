//! The calibration file (`--calibration`, Parquet): its bytes written to a temporary file,
//! registered and checked by `register_calibration` as `arrowquant quantize` does (the
//! Parquet footer and schema through DataFusion), then, when the columns pass, every row read
//! back (the page decoders). Whatever the bytes, the answer is rows or an error.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use arrowquant::pipeline::activations::register_calibration;
use datafusion::prelude::SessionContext;
use libfuzzer_sys::fuzz_target;

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

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

fuzz_target!(|data: &[u8]| {
    let path = &*FILE;
    std::fs::write(path, data).unwrap();
    let path = path.to_str().unwrap();
    RUNTIME.block_on(async {
        // A new context each time: a reused one could answer from its cache of file metadata.
        let ctx = SessionContext::new();
        if register_calibration(&ctx, path).await.is_err() {
            return;
        }
        let read = async {
            ctx.sql("SELECT layer, timestep, \"values\" FROM calibration")
                .await?
                .collect()
                .await
        };
        let _ = read.await;
    });
});
