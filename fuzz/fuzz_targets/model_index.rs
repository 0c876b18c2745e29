//! The JSON files that say where a model's tensors are: a shard index
//! (`*.safetensors.index.json`, its `weight_map`) and a diffusers `model_index.json` (its
//! component names), each opened by `Model::open` over a real folder of small, valid
//! safetensors files in a temporary directory. The first byte picks the file, the rest is its
//! text. Whatever the text, the answer is a model or an error, and every file a model reads
//! lies inside the model's folder.

#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use arrowquant_formats::Model;
use libfuzzer_sys::fuzz_target;

/// `root/model/` is the model; `root/` also holds safetensors files that no model may reach.
struct Fixture {
    model: PathBuf,
    canonical_model: PathBuf,
}

/// A valid safetensors file of one F32 tensor of two values.
fn safetensors(tensor: &str) -> Vec<u8> {
    let mut header =
        format!(r#"{{"{tensor}":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}}"#);
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 8]);
    bytes
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    // Every run writes a file: under the folder scripts/fuzz.sh gives (and removes), else on
    // tmpfs where there is one.
    let base = if let Some(dir) = std::env::var_os("ARROWQUANT_FUZZ_TMP") {
        PathBuf::from(dir)
    } else if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let root = base.join(format!("arrowquant-fuzz-model-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let model = root.join("model");
    write(&root.join("outside.safetensors"), &safetensors("outside"));
    write(
        &root.join("outside/model.safetensors"),
        &safetensors("outside"),
    );
    write(
        &model.join("model-00001-of-00002.safetensors"),
        &safetensors("a"),
    );
    write(
        &model.join("model-00002-of-00002.safetensors"),
        &safetensors("b"),
    );
    write(&model.join("model.fp16.safetensors"), &safetensors("a"));
    write(&model.join("config.json"), br#"{"model_type": "test"}"#);
    write(
        &model.join("unet/diffusion_pytorch_model.safetensors"),
        &safetensors("w"),
    );
    write(
        &model.join("unet/config.json"),
        br#"{"_class_name": "UNet2DConditionModel"}"#,
    );
    write(
        &model.join("text_encoder/model.safetensors"),
        &safetensors("w"),
    );
    write(
        &model.join("vae/diffusion_pytorch_model.safetensors.index.json"),
        br#"{"metadata": {}, "weight_map": {"a": "s-00001-of-00002.safetensors", "b": "s-00002-of-00002.safetensors"}}"#,
    );
    write(
        &model.join("vae/s-00001-of-00002.safetensors"),
        &safetensors("a"),
    );
    write(
        &model.join("vae/s-00002-of-00002.safetensors"),
        &safetensors("b"),
    );
    write(
        &model.join("vae/broken.safetensors"),
        b"not a safetensors file",
    );
    fs::create_dir_all(model.join("scheduler")).unwrap();
    let canonical_model = model.canonicalize().unwrap();
    Fixture {
        model,
        canonical_model,
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let fixture = &*FIXTURE;
    let pipeline = fixture.model.join("model_index.json");
    let index = fixture.model.join("fuzzed.safetensors.index.json");
    let opened = if mode & 1 == 0 {
        let _ = fs::remove_file(&index);
        fs::write(&pipeline, text).unwrap();
        Model::open(&fixture.model)
    } else {
        let _ = fs::remove_file(&pipeline);
        fs::write(&index, text).unwrap();
        Model::open(&index)
    };
    match opened {
        Ok(model) => {
            assert!(!model.tensors.is_empty(), "a model without tensors");
            for file in &model.files {
                let path = file.path().canonicalize().unwrap();
                assert!(
                    path.starts_with(&fixture.canonical_model),
                    "the model reads {}, outside its folder {}",
                    file.path().display(),
                    fixture.model.display()
                );
            }
            for t in &model.tensors {
                assert!(t.file < model.files.len());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
