//! Finding a model's tensors: a single file, a sharded checkpoint (`*.safetensors.index.json`),
//! a Hugging Face model folder, or a diffusers pipeline folder (`model_index.json` with one
//! sub-folder per component, whose tensors are named `component.tensor`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::ModelError;
use super::input::read_text;
use super::safetensors_file::{SafetensorsFile, TensorMeta};

/// One tensor of a model: its full name (with the component prefix) and where it lives.
#[derive(Debug, Clone)]
pub struct ModelTensor {
    pub layer: String,
    pub file: usize,
    pub meta: TensorMeta,
}

/// A configuration file found beside the weights (`config.json`, `model_index.json`).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The component it describes (`unet`, `text_encoder`, ...); empty for the model itself.
    pub component: String,
    pub path: PathBuf,
    pub json: serde_json::Value,
}

/// Every tensor of a model, memory-mapped.
#[derive(Debug)]
pub struct Model {
    pub root: PathBuf,
    pub files: Vec<Arc<SafetensorsFile>>,
    /// Tensors in file order, file after file.
    pub tensors: Vec<ModelTensor>,
    pub configs: Vec<ConfigFile>,
    /// Every file the model was read from (weights, shard indexes, configurations), as opened:
    /// what a command writing an output must never replace.
    pub sources: Vec<PathBuf>,
}

impl Model {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
        let mut model = Model {
            root: path.to_path_buf(),
            files: Vec::new(),
            tensors: Vec::new(),
            configs: Vec::new(),
            sources: Vec::new(),
        };
        if meta.is_dir() {
            // Anything by that name, so that a FIFO or folder there is refused, not skipped.
            if path.join("model_index.json").exists() {
                model.add_pipeline(path)?;
            } else {
                model.add_folder(path, "")?;
            }
        } else if path.to_string_lossy().ends_with(".index.json") {
            model.add_sharded(path, "")?;
            model.add_config(path.parent().unwrap_or(Path::new(".")), "")?;
        } else {
            model.add_file(path, "", None)?;
            model.add_config(path.parent().unwrap_or(Path::new(".")), "")?;
        }
        if model.tensors.is_empty() {
            return Err(ModelError::Empty {
                path: path.to_path_buf(),
                reason: "no tensors found".into(),
            });
        }
        Ok(model)
    }

    pub fn file(&self, tensor: &ModelTensor) -> &Arc<SafetensorsFile> {
        &self.files[tensor.file]
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.meta.len as u64).sum()
    }

    /// A diffusers pipeline: every component named in `model_index.json` that has weights.
    fn add_pipeline(&mut self, dir: &Path) -> Result<(), ModelError> {
        let index_path = dir.join("model_index.json");
        let index = self.read_json(&index_path)?;
        self.configs.push(ConfigFile {
            component: String::new(),
            path: index_path.clone(),
            json: index.clone(),
        });
        let Some(entries) = index.as_object() else {
            return Err(ModelError::BadJson {
                path: index_path,
                reason: "expected an object".into(),
            });
        };
        let mut components: Vec<&String> = entries
            .iter()
            .filter(|(key, value)| !key.starts_with('_') && value.is_array())
            .map(|(key, _)| key)
            .collect();
        components.sort();
        for component in components {
            // A key is a folder of this pipeline, never a path out of it.
            if !is_plain_name(component) {
                return Err(ModelError::BadPipeline {
                    path: index_path,
                    reason: format!("component '{component}' is not a folder name"),
                });
            }
            let sub = dir.join(component);
            if sub.is_dir() && has_safetensors(&sub)? {
                self.add_folder(&sub, &format!("{component}."))?;
            }
        }
        if self.tensors.is_empty() {
            return Err(ModelError::Empty {
                path: dir.to_path_buf(),
                reason: "no component folder of model_index.json holds a safetensors file".into(),
            });
        }
        Ok(())
    }

    /// A model folder: a shard index if there is one, else its safetensors files (the plain
    /// `model.safetensors` / `diffusion_pytorch_model.safetensors` before variants such as
    /// `.fp16.safetensors`, which repeat the same tensors).
    fn add_folder(&mut self, dir: &Path, prefix: &str) -> Result<(), ModelError> {
        let mut indexes = Vec::new();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))? {
            let entry = entry.map_err(|e| ModelError::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors.index.json") {
                indexes.push(entry.path());
            } else if name.ends_with(".safetensors") {
                files.push(entry.path());
            }
        }
        indexes.sort();
        files.sort();
        self.add_config(dir, prefix.trim_end_matches('.'))?;
        if let Some(index) = indexes
            .iter()
            .find(|p| !is_variant(p, ".safetensors.index.json"))
        {
            return self.add_sharded(index, prefix);
        }
        if let Some(index) = indexes.first() {
            return self.add_sharded(index, prefix);
        }
        let plain: Vec<&PathBuf> = files
            .iter()
            .filter(|p| !is_variant(p, ".safetensors"))
            .collect();
        let chosen: Vec<&PathBuf> = if plain.is_empty() {
            files.iter().take(1).collect()
        } else {
            plain
        };
        if chosen.is_empty() {
            return Err(ModelError::Empty {
                path: dir.to_path_buf(),
                reason: "no .safetensors file in this folder".into(),
            });
        }
        for file in chosen {
            self.add_file(file, prefix, None)?;
        }
        Ok(())
    }

    /// A sharded checkpoint: the shards its `weight_map` names, each tensor checked to be in the
    /// shard the index says.
    fn add_sharded(&mut self, index_path: &Path, prefix: &str) -> Result<(), ModelError> {
        let index = self.read_json(index_path)?;
        let bad = |reason: String| ModelError::BadIndex {
            path: index_path.to_path_buf(),
            reason,
        };
        let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(bad("no \"weight_map\" object".into()));
        };
        let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tensor, shard) in map {
            let Some(shard) = shard.as_str() else {
                return Err(bad(format!("shard of '{tensor}' is not a string")));
            };
            if !is_plain_name(shard) {
                return Err(bad(format!("shard '{shard}' is not a file name")));
            }
            by_shard.entry(shard).or_default().push(tensor);
        }
        let dir = index_path.parent().unwrap_or(Path::new("."));
        for (shard, expected) in by_shard {
            self.add_file(&dir.join(shard), prefix, Some((index_path, &expected)))?;
        }
        Ok(())
    }

    fn add_file(
        &mut self,
        path: &Path,
        prefix: &str,
        expected: Option<(&Path, &[&str])>,
    ) -> Result<(), ModelError> {
        let file = SafetensorsFile::open(path)?;
        self.sources.push(path.to_path_buf());
        if let Some((index, names)) = expected {
            for name in names {
                if !file.tensors().iter().any(|t| t.name == *name) {
                    return Err(ModelError::BadIndex {
                        path: index.to_path_buf(),
                        reason: format!("tensor '{name}' is not in {}", path.display()),
                    });
                }
            }
        }
        let index = self.files.len();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, t) in self.tensors.iter().enumerate() {
            seen.insert(&t.layer, i);
        }
        let mut added = Vec::new();
        for meta in file.tensors() {
            let layer = format!("{prefix}{}", meta.name);
            if let Some(&other) = seen.get(layer.as_str()) {
                return Err(ModelError::Duplicate {
                    tensor: layer,
                    first: self.files[self.tensors[other].file].path().to_path_buf(),
                    second: path.to_path_buf(),
                });
            }
            added.push(ModelTensor {
                layer,
                file: index,
                meta: meta.clone(),
            });
        }
        self.tensors.extend(added);
        self.files.push(Arc::new(file));
        Ok(())
    }

    fn add_config(&mut self, dir: &Path, component: &str) -> Result<(), ModelError> {
        let path = dir.join("config.json");
        // Anything by that name is read, so that a FIFO or folder there is refused.
        if path.exists() {
            let json = self.read_json(&path)?;
            self.configs.push(ConfigFile {
                component: component.to_string(),
                path,
                json,
            });
        }
        Ok(())
    }

    fn read_json(&mut self, path: &Path) -> Result<serde_json::Value, ModelError> {
        let text = read_text(path, MAX_JSON)?;
        self.sources.push(path.to_path_buf());
        serde_json::from_str(&text).map_err(|e| ModelError::BadJson {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// The largest JSON file read (a shard index of a very large model is a few MB).
const MAX_JSON: u64 = 100_000_000;

/// A name that stays in its folder: a shard of an index, a component of a pipeline. Not empty,
/// not `.` or `..`, no separator (so not absolute either), no NUL.
pub fn is_plain_name(name: &str) -> bool {
    !matches!(name, "" | "." | "..") && !name.contains(['/', '\\', '\0'])
}

/// `name.fp16.safetensors` is a variant of `name.safetensors` (shards, `name-00001-of-00002`,
/// have no dot in their stem).
fn is_variant(path: &Path, suffix: &str) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    name.strip_suffix(suffix)
        .is_some_and(|stem| stem.contains('.'))
}

fn has_safetensors(dir: &Path) -> Result<bool, ModelError> {
    for entry in std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))? {
        let entry = entry.map_err(|e| ModelError::io(dir, e))?;
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(".safetensors")
        {
            return Ok(true);
        }
    }
    Ok(false)
}
