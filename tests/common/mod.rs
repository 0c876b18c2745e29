//! Helpers shared by the integration tests: safetensors files built with the `safetensors`
//! crate itself, and the CLI run as a subprocess.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::{Dtype, TensorView};

/// A tensor to write: name, dtype, shape and little-endian bytes.
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Tensor {
    pub fn f32(name: &str, shape: &[usize], values: &[f32]) -> Tensor {
        Tensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn raw(name: &str, dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> Tensor {
        Tensor {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            bytes,
        }
    }
}

/// Serializes tensors with the `safetensors` crate.
pub fn safetensors_bytes(tensors: &[Tensor]) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).expect("a valid view"),
            )
        })
        .collect();
    safetensors::serialize(views, None).expect("serializable")
}

pub fn write_safetensors(path: &Path, tensors: &[Tensor]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, safetensors_bytes(tensors)).unwrap();
}

/// Deterministic pseudo-random values in about [-1, 1] (a tiny LCG: no test depends on rand).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A fresh directory under the target dir, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn arrowquant(args: &[&str], cwd: &Path) -> Output {
    command(args, cwd).output().expect("the binary runs")
}

/// The binary with `args` in `cwd`, free of the caller's `ARROW_QUANT_*` settings.
pub fn command(args: &[&str], cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arrowquant"));
    command.args(args).current_dir(cwd);
    // vars_os: the caller's environment may hold variables that are not UTF-8.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ARROW_QUANT_") {
            command.env_remove(key);
        }
    }
    command
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failed run: exit code 1 and exactly one line on stderr, containing `needle`.
pub fn assert_fails_with(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Every file under a directory with its contents, to prove a run left it untouched.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.is_file() {
            out.push((d.clone(), std::fs::read(&d).unwrap()));
            continue;
        }
        for e in std::fs::read_dir(&d).unwrap() {
            stack.push(e.unwrap().path());
        }
    }
    out.sort();
    out
}

/// The recorded calibration set of the bundled model.
pub fn bundled_calibration() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/calibration/tiny-unet-ddpm.parquet")
}

/// The bundled example model.
pub fn bundled_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/models/tiny-unet")
}

/// The value of a GGUF file's metadata key, when the file has it.
pub fn meta_value(
    file: &arrowquant::model::gguf_file::GgufFile,
    key: &str,
) -> Option<arrowquant::model::gguf_file::Value> {
    let entry = file.header().metadata.iter().find(|e| e.key == key)?;
    file.value(entry)
}

/// A GGUF file's metadata key as text (strings as they are, arrays as JSON); empty when absent.
pub fn meta_text(file: &arrowquant::model::gguf_file::GgufFile, key: &str) -> String {
    let entry = file.header().metadata.iter().find(|e| e.key == key);
    entry.map(|e| file.text(e)).unwrap_or_default()
}
