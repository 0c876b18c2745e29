//! [`QuantConfig`] (the Python package's `DiffusionQuantConfig`): what a quantization run does,
//! from a profile, a YAML file, `ARROW_QUANT_*` environment variables and explicit settings.
//! The weight settings are held as the kernels' types ([`Scheme`], [`GroupSize`]) from the
//! moment they are read, and [`QuantConfig::spec`] is the validated [`QuantSpec`].
//!
//! Priority, highest first: explicit settings (CLI flags, a config object) > YAML > environment >
//! the profile's defaults. The profile itself is chosen by the same order. Every key is checked:
//! an unknown key or a bad value is an error that names the key and where it came from.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::Path;

use arrowquant_udfs::kernels::KernelError;
use arrowquant_udfs::kernels::block_format::Encoder;
use arrowquant_udfs::kernels::scheme::{GroupSize, QuantSpec, Scheme};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Deployment profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// 2-bit weights for small devices.
    Edge,
    /// 4-bit weights, the balanced default.
    Local,
    /// 8-bit weights, near-lossless.
    Cloud,
}

impl Profile {
    pub const NAMES: &'static str = "edge, local, cloud";

    pub fn parse(name: &str) -> Option<Profile> {
        match name.trim().to_ascii_lowercase().as_str() {
            "edge" => Some(Profile::Edge),
            "local" => Some(Profile::Local),
            "cloud" => Some(Profile::Cloud),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Edge => "edge",
            Profile::Local => "local",
            Profile::Cloud => "cloud",
        }
    }

    /// The profile's defaults. Cosine thresholds are per tensor, against the original; a
    /// tensor below it is redone at the next wider setting when `fallback` is on.
    pub fn defaults(self) -> QuantConfig {
        let (bit_width, group_size, min_cosine) = match self {
            Profile::Edge => (2, 32, 0.90),
            Profile::Local => (4, 64, 0.99),
            Profile::Cloud => (8, 64, 0.9999),
        };
        // Activations (used with a calibration set): the edge profile's 4-bit activations gain
        // most from adaptive groups and the transition optimisation (examples/sql/time_aware.sql).
        let (activation_bits, timestep_groups, grouping, optimize) = match self {
            Profile::Edge => (4, 10, "adaptive", true),
            Profile::Local => (8, 10, "uniform", false),
            Profile::Cloud => (8, 20, "adaptive", false),
        };
        QuantConfig {
            profile: self,
            bit_width,
            group_size: GroupSize::Fixed(group_size),
            scheme: Scheme::Asym,
            encoder: Encoder::default(),
            min_cosine,
            sensitive_bit_width: 8,
            fallback: true,
            calibration: None,
            activation_bits,
            timestep_groups,
            num_timesteps: 1000,
            grouping: grouping.to_string(),
            smoothing: "none".to_string(),
            optimize,
            lambda_markov: 1.0,
            lambda_entropy: 0.01,
            format: OutputFormat::Parquet,
            pure: false,
            gguf_target: GgufTarget::ComfyUi,
            max_size: None,
            target_bpw: None,
            candidates: Vec::new(),
            tensor_types: Vec::new(),
            recipe: None,
            imatrix: None,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A resolved configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantConfig {
    pub profile: Profile,
    /// Code width of ordinary weight tensors.
    pub bit_width: u8,
    /// Values per group: a number, or `row` for one group per row (written as its text).
    #[serde(serialize_with = "as_text")]
    pub group_size: GroupSize,
    /// `asym`, `sym`, `asym_minmax`, `sym_minmax`, or a GGUF scheme (`q4_0`, ...).
    #[serde(serialize_with = "as_text")]
    pub scheme: Scheme,
    /// How a GGUF scheme's codes are chosen: `search` (ours, the default) or `reference`
    /// (llama.cpp's rule, bit for bit; legacy formats). Also written after the scheme, as
    /// `q4_0:reference`; whichever is set later wins.
    #[serde(serialize_with = "as_text")]
    pub encoder: Encoder,
    /// Smallest acceptable whole-tensor cosine similarity against the original.
    pub min_cosine: f64,
    /// Code width of sensitive tensors (embeddings, time embeddings, the first and last
    /// convolution of an image UNet) when it is wider than `bit_width`.
    pub sensitive_bit_width: u8,
    /// Redo tensors under `min_cosine` at the next wider setting.
    pub fallback: bool,
    /// Recorded activations (layer, timestep, values) to calibrate per-timestep-group ranges
    /// from; no activation parameters without one.
    pub calibration: Option<String>,
    /// Code width of activations.
    pub activation_bits: u8,
    /// Timestep groups per layer.
    pub timestep_groups: u32,
    /// Length of the denoiser's schedule (timesteps 0 … num_timesteps − 1).
    pub num_timesteps: u32,
    /// `uniform`, `log` or `adaptive` timestep groups.
    pub grouping: String,
    /// Boundary smoothing: `none`, `linear`, `cubic` or `sigmoid`.
    pub smoothing: String,
    /// Choose the groups' ranges jointly (thermo_optimize) instead of one by one.
    pub optimize: bool,
    /// Weight of the transition term of the optimisation.
    pub lambda_markov: f64,
    /// Weight of the entropy term of the optimisation.
    pub lambda_entropy: f64,
    /// What `quantize` writes: an output directory (`parquet`) or one GGUF file (`gguf`).
    pub format: OutputFormat,
    /// GGUF output: every quantized tensor in the scheme's type, with only the shape fallbacks
    /// (as `llama-quantize --pure`): no wider sensitive layers, no quality fallback.
    pub pure: bool,
    /// GGUF output of an SD1/SDXL UNet: the form ComfyUI-GGUF loads (`comfyui`: reshaped rows
    /// and `comfy.gguf.orig_shape.*`) or the one stable-diffusion.cpp loads (`sd.cpp`: original
    /// shapes, `model.diffusion_model.` names).
    pub gguf_target: GgufTarget,
    /// Bit allocation: the most bytes of tensor data the output may hold; each quantized
    /// tensor's format is chosen from `candidates` to keep the error least within it.
    pub max_size: Option<u64>,
    /// Bit allocation by bits per weight over the whole model's tensor data (as llama.cpp
    /// reports a file's BPW); the same as the `max_size` it makes.
    pub target_bpw: Option<f64>,
    /// The formats allocation chooses from; empty for [`DEFAULT_CANDIDATES`].
    #[serde(serialize_with = "as_list")]
    pub candidates: Vec<Scheme>,
    /// `REGEX=SCHEME` overrides, in the order given: a tensor whose (output) name the first
    /// matching pattern finds takes that scheme, before any other rule. Written as the key's
    /// text, `REGEX=SCHEME;REGEX=SCHEME`.
    #[serde(rename = "tensor_type", serialize_with = "as_overrides")]
    pub tensor_types: Vec<TensorType>,
    /// GGUF output in one of llama.cpp's file types by llama-quantize's own rules (`Q4_K_M`,
    /// `Q3_K_M`, `IQ4_XS`, …; checked by the pipeline, which holds the rules).
    pub recipe: Option<String>,
    /// A llama.cpp importance matrix (`llama-imatrix` output, GGUF or legacy `.dat`): each
    /// 2-D tensor's per-column mean squares of its input weigh its error, in the formats'
    /// search and in the allocation.
    pub imatrix: Option<String>,
}

/// The formats bit allocation chooses from unless told otherwise: llama.cpp's k-quant ladder
/// and IQ4_XS (each tensor's row fallback applied, as for a single scheme).
pub const DEFAULT_CANDIDATES: [Scheme; 7] = [
    Scheme::Q2K,
    Scheme::Q3K,
    Scheme::Iq4Xs,
    Scheme::Q4K,
    Scheme::Q5K,
    Scheme::Q6K,
    Scheme::Q8_0,
];

/// A `--tensor-type REGEX=SCHEME` override. The pattern is compiled where it is used (the
/// pipeline), so that an error there names it; here it is text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorType {
    pub pattern: String,
    #[serde(serialize_with = "as_text")]
    pub scheme: Scheme,
}

impl TensorType {
    /// `REGEX=SCHEME`, split at the last `=` (a pattern may hold one, a scheme never does).
    pub fn parse(text: &str) -> Result<TensorType, String> {
        let Some((pattern, scheme)) = text.rsplit_once('=') else {
            return Err(format!("'{text}' is not REGEX=SCHEME"));
        };
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(format!("'{text}': the pattern before '=' is empty"));
        }
        let scheme = Scheme::parse(scheme.trim()).map_err(|e| format!("'{text}': {e}"))?;
        Ok(TensorType {
            pattern: pattern.to_string(),
            scheme,
        })
    }
}

/// A size in bytes: a whole number, or a number with a unit (`20MB`, `1.5GiB`, `512 KiB`;
/// B, KB, MB, GB, TB in powers of 1000, KiB … TiB in powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim();
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        _ => {
            return Err(format!(
                "'{text}': unknown unit '{unit}' (B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (a number of bytes, or with a unit: 20MB)"))?;
    let bytes = (value * scale).round();
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("'{text}' is not a size of at least one byte"));
    }
    Ok(bytes as u64)
}

/// A list of schemes written as its text, `q2_K,q3_K`; none when empty (the default).
fn as_list<S: serde::Serializer>(value: &[Scheme], s: S) -> Result<S::Ok, S::Error> {
    if value.is_empty() {
        return s.serialize_none();
    }
    let names: Vec<String> = value.iter().map(|x| x.to_string()).collect();
    s.serialize_some(&names.join(","))
}

/// Overrides written as the `tensor_type` key's text; none when there are none.
fn as_overrides<S: serde::Serializer>(value: &[TensorType], s: S) -> Result<S::Ok, S::Error> {
    if value.is_empty() {
        return s.serialize_none();
    }
    let items: Vec<String> = value
        .iter()
        .map(|t| format!("{}={}", t.pattern, t.scheme))
        .collect();
    s.serialize_some(&items.join(";"))
}

/// Which runtime a GGUF UNet is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GgufTarget {
    #[serde(rename = "comfyui")]
    ComfyUi,
    #[serde(rename = "sd.cpp")]
    SdCpp,
}

impl GgufTarget {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "comfyui" => Some(GgufTarget::ComfyUi),
            "sd.cpp" => Some(GgufTarget::SdCpp),
            _ => None,
        }
    }
}

/// What `quantize` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// A directory of weights.parquet, report.parquet and manifest.json.
    Parquet,
    /// One GGUF file, as llama.cpp loads it.
    Gguf,
}

impl OutputFormat {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "parquet" => Some(OutputFormat::Parquet),
            "gguf" => Some(OutputFormat::Gguf),
            _ => None,
        }
    }
}

/// A setting of the kernels' types written as the text it is parsed from (`64`, `row`, `q4_0`).
fn as_text<T: fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

impl Default for QuantConfig {
    fn default() -> Self {
        Profile::Local.defaults()
    }
}

/// The keys a configuration accepts (YAML keys; `ARROW_QUANT_` + upper case in the environment).
pub const KEYS: [&str; 26] = [
    "profile",
    "bit_width",
    "group_size",
    "scheme",
    "encoder",
    "min_cosine",
    "sensitive_bit_width",
    "fallback",
    "calibration",
    "activation_bits",
    "timestep_groups",
    "num_timesteps",
    "grouping",
    "smoothing",
    "optimize",
    "lambda_markov",
    "lambda_entropy",
    "format",
    "pure",
    "gguf_target",
    "max_size",
    "target_bpw",
    "candidates",
    "tensor_type",
    "recipe",
    "imatrix",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: unknown key '{key}' (known keys: {})", KEYS.join(", "))]
    UnknownKey { origin: String, key: String },
    #[error("{origin}: key '{key}': {reason}")]
    BadValue {
        origin: String,
        key: String,
        reason: String,
    },
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// A value from any source: YAML scalars keep their type, environment values are text.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            // `10.0`, not `10`: a float given for a whole number is shown as given.
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Text(s) => write!(f, "{s}"),
        }
    }
}

/// Settings from one source, in the order given.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Where they came from, for error messages ("config.yaml", "environment", "flags").
    pub origin: String,
    pub values: Vec<(String, Value)>,
}

impl Settings {
    pub fn new(origin: impl Into<String>) -> Self {
        Settings {
            origin: origin.into(),
            values: Vec::new(),
        }
    }

    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        self.values.push((key.to_string(), value));
        self
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The settings of a YAML file: a mapping of keys to scalars. The file is read up to
    /// [`MAX_CONFIG_BYTES`]: a configuration has a dozen keys, and a larger file (or a device
    /// that never ends) is a mistake, not something to hold in memory.
    pub fn from_yaml_file(path: &Path) -> Result<Settings, ConfigError> {
        let origin = path.display().to_string();
        let file_error = |reason: String| ConfigError::File {
            path: origin.clone(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| file_error(e.to_string()))?;
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| file_error(e.to_string()))?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(file_error(format!(
                "over {MAX_CONFIG_BYTES} bytes, too large for a configuration file"
            )));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            file_error(format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        Settings::from_yaml(&origin, &text)
    }

    /// The settings of a YAML document. An empty document (or only comments) sets nothing.
    /// Every value must be a scalar: a null, a list, a mapping or a tagged value is refused
    /// with the key and what the key expects.
    pub fn from_yaml(origin: &str, text: &str) -> Result<Settings, ConfigError> {
        let file_error = |reason: String| ConfigError::File {
            path: origin.to_string(),
            reason,
        };
        // Repeated keys and non-finite numbers reach the checks below, which name the key.
        let mut options = serde_saphyr::Options::default();
        options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
        options.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
        let document: YamlDocument = serde_saphyr::from_str_with_options(text, options)
            .map_err(|e| file_error(format!("not valid YAML: {e}")))?;
        let entries = match document {
            YamlDocument::Empty => Vec::new(),
            YamlDocument::Map(entries) => entries,
            YamlDocument::Other(kind) => {
                return Err(file_error(format!(
                    "expected a mapping of configuration keys to values, got {kind}"
                )));
            }
        };
        let mut settings = Settings::new(origin);
        let mut seen = HashSet::new();
        for (key, value) in entries {
            let key = match key {
                YamlScalar::Value(Value::Text(k)) => k,
                YamlScalar::Value(other) => other.to_string(),
                YamlScalar::Other(kind) => {
                    return Err(file_error(format!(
                        "a key must be text, got {kind} (known keys: {})",
                        KEYS.join(", ")
                    )));
                }
            };
            let Some(expects) = expected(&key) else {
                return Err(ConfigError::UnknownKey {
                    origin: origin.to_string(),
                    key,
                });
            };
            if !seen.insert(key.clone()) {
                return Err(ConfigError::BadValue {
                    origin: origin.to_string(),
                    key,
                    reason: "given twice".to_string(),
                });
            }
            match value {
                YamlScalar::Value(v) => {
                    settings.set(&key, v);
                }
                YamlScalar::Other(kind) => {
                    return Err(ConfigError::BadValue {
                        origin: origin.to_string(),
                        key,
                        reason: format!("expected {expects}, got {kind}"),
                    });
                }
            }
        }
        Ok(settings)
    }

    /// The settings of a JSON object of the YAML file's keys (a server job's `config`). Every
    /// value must be a scalar: a null, an array or an object is refused with the key and what
    /// the key expects, as in YAML.
    pub fn from_json(
        origin: &str,
        object: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Settings, ConfigError> {
        use serde_json::Value as Json;
        let mut settings = Settings::new(origin);
        for (key, value) in object {
            let Some(expects) = expected(key) else {
                return Err(ConfigError::UnknownKey {
                    origin: origin.to_string(),
                    key: key.clone(),
                });
            };
            let refuse = |kind: String| ConfigError::BadValue {
                origin: origin.to_string(),
                key: key.clone(),
                reason: format!("expected {expects}, got {kind}"),
            };
            let value = match value {
                Json::Bool(b) => Value::Bool(*b),
                Json::Number(n) => match (n.as_i64(), n.as_f64()) {
                    (Some(i), _) => Value::Int(i),
                    (None, Some(x)) if !n.is_u64() => Value::Float(x),
                    _ => return Err(refuse(format!("the number {n}, out of range"))),
                },
                Json::String(s) => Value::Text(s.clone()),
                Json::Null => {
                    return Err(refuse(
                        "null (no value; leave the key out for the default)".into(),
                    ));
                }
                Json::Array(_) => return Err(refuse("an array".into())),
                Json::Object(_) => return Err(refuse("an object".into())),
            };
            settings.set(key, value);
        }
        Ok(settings)
    }

    /// `ARROW_QUANT_*` variables of the process environment. Other variables are not decoded:
    /// they may hold anything, including bytes that are not UTF-8.
    pub fn from_process_env() -> Result<Settings, ConfigError> {
        Settings::from_env(std::env::vars_os())
    }

    /// `ARROW_QUANT_*` variables from an environment (`std::env::vars_os()`, or pairs of
    /// strings in tests). A variable of ours whose name or value is not UTF-8 is an error
    /// naming it.
    pub fn from_env<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Settings, ConfigError>
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        const PREFIX: &str = "ARROW_QUANT_";
        let mut settings = Settings::new("environment");
        let mut found: Vec<(String, String)> = Vec::new();
        for (name, value) in vars {
            let (name, value): (OsString, OsString) = (name.into(), value.into());
            // A lossy view keeps an ASCII prefix intact, so names of ours are recognised
            // whatever follows it.
            let shown = name.to_string_lossy();
            let Some(rest) = shown.strip_prefix(PREFIX) else {
                continue;
            };
            let not_unicode = |what: &str| ConfigError::BadValue {
                origin: "environment".to_string(),
                key: rest.to_ascii_lowercase(),
                reason: format!("{what} of {shown} is not valid UTF-8"),
            };
            if name.to_str().is_none() {
                return Err(not_unicode("the name"));
            }
            let Some(value) = value.to_str() else {
                return Err(not_unicode("the value"));
            };
            found.push((rest.to_string(), value.to_string()));
        }
        found.sort();
        for (key, value) in found {
            settings.set(&key.to_ascii_lowercase(), Value::Text(value));
        }
        Ok(settings)
    }
}

/// The largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// What each key accepts, for messages; `None` for an unknown key.
fn expected(key: &str) -> Option<&'static str> {
    Some(match key {
        "profile" => "a profile name (edge, local or cloud)",
        "bit_width" | "sensitive_bit_width" => "a bit width (2, 3, 4, 5, 6 or 8)",
        "group_size" => "a group size (16 to 4096) or 'row'",
        "scheme" => {
            "a scheme name (asym, sym, asym_minmax, sym_minmax, q4_0, q4_1, q5_0, q5_1, q8_0, \
             q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl or iq4_xs; a GGUF one may end in ':reference')"
        }
        "encoder" => "an encoder name (search or reference)",
        "min_cosine" => "a number in (0, 1]",
        "fallback" | "optimize" | "pure" => "true or false",
        "format" => "parquet or gguf",
        "gguf_target" => "comfyui or sd.cpp",
        "calibration" => "the path of a Parquet file",
        "activation_bits" => "a whole number from 2 to 8",
        "timestep_groups" | "num_timesteps" => "a whole number from 1 to 1000000",
        "grouping" => "uniform, log or adaptive",
        "smoothing" => "none, linear, cubic or sigmoid",
        "lambda_markov" | "lambda_entropy" => "a number ≥ 0",
        "max_size" => "a size in bytes, or with a unit (20MB, 1.5GiB)",
        "target_bpw" => "a number of bits per weight, above 0 and at most 32",
        "candidates" => "a comma-separated list of schemes (q2_K,q4_K,q8_0)",
        "recipe" => "one of llama.cpp's file types (Q4_K_M, Q3_K_M, Q5_K_M, IQ4_XS, …)",
        "imatrix" => "the path of a llama.cpp importance matrix (GGUF or .dat)",
        "tensor_type" => "REGEX=SCHEME overrides separated by ';' (blk\\.0\\..*=q8_0;attn_v=q6_K)",
        _ => return None,
    })
}

/// A YAML document as read: a mapping, nothing at all, or something else (named for the
/// message). Values of every shape are accepted here, so that a bad one is refused with its
/// key rather than with the parser's "did not match any variant".
enum YamlDocument {
    Empty,
    Map(Vec<(YamlScalar, YamlScalar)>),
    Other(String),
}

/// One key or value: a scalar, or what it was instead.
enum YamlScalar {
    Value(Value),
    Other(String),
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = YamlScalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<YamlScalar, E> {
        Ok(YamlScalar::Value(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<YamlScalar, E> {
        Ok(YamlScalar::Value(Value::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<YamlScalar, E> {
        Ok(match i64::try_from(v) {
            Ok(v) => YamlScalar::Value(Value::Int(v)),
            Err(_) => YamlScalar::Other(format!("the number {v}, out of range")),
        })
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<YamlScalar, E> {
        Ok(match i64::try_from(v) {
            Ok(v) => YamlScalar::Value(Value::Int(v)),
            Err(_) => YamlScalar::Other(format!("the number {v}, out of range")),
        })
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<YamlScalar, E> {
        self.visit_i128(i128::try_from(v).unwrap_or(i128::MAX))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<YamlScalar, E> {
        Ok(YamlScalar::Value(Value::Float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<YamlScalar, E> {
        Ok(YamlScalar::Value(Value::Text(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<YamlScalar, E> {
        Ok(YamlScalar::Value(Value::Text(v)))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<YamlScalar, E> {
        Ok(YamlScalar::Other("binary data".into()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<YamlScalar, E> {
        Ok(YamlScalar::Other(
            "null (no value; leave the key out for the default)".into(),
        ))
    }
    fn visit_none<E: de::Error>(self) -> Result<YamlScalar, E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<YamlScalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<YamlScalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(YamlScalar::Other("a list".into()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<YamlScalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(YamlScalar::Other("a mapping".into()))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<YamlScalar, A::Error> {
        let (tag, variant): (String, _) = data.variant()?;
        de::VariantAccess::newtype_variant::<IgnoredAny>(variant)?;
        Ok(YamlScalar::Other(format!("a value tagged !{tag}")))
    }
}

impl<'de> Deserialize<'de> for YamlScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = YamlDocument;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping of configuration keys to values")
    }
    fn visit_unit<E: de::Error>(self) -> Result<YamlDocument, E> {
        Ok(YamlDocument::Empty)
    }
    fn visit_none<E: de::Error>(self) -> Result<YamlDocument, E> {
        Ok(YamlDocument::Empty)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<YamlDocument, D::Error> {
        d.deserialize_any(DocumentVisitor)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<YamlDocument, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<YamlScalar, YamlScalar>()? {
            // A configuration has a dozen keys: stop early on a file of thousands.
            if entries.len() > 4 * KEYS.len() {
                return Err(de::Error::custom(format!(
                    "over {} entries, more than a configuration has",
                    4 * KEYS.len()
                )));
            }
            entries.push(entry);
        }
        Ok(YamlDocument::Map(entries))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<YamlDocument, A::Error> {
        other_document(ScalarVisitor.visit_seq(seq)?)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<YamlDocument, E> {
        other_document(ScalarVisitor.visit_bool(v)?)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<YamlDocument, E> {
        other_document(ScalarVisitor.visit_i64(v)?)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<YamlDocument, E> {
        other_document(ScalarVisitor.visit_u64(v)?)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<YamlDocument, E> {
        other_document(ScalarVisitor.visit_f64(v)?)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<YamlDocument, E> {
        other_document(ScalarVisitor.visit_str(v)?)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<YamlDocument, A::Error> {
        other_document(ScalarVisitor.visit_enum(data)?)
    }
}

fn other_document<E>(what: YamlScalar) -> Result<YamlDocument, E> {
    Ok(YamlDocument::Other(match what {
        YamlScalar::Value(v) => format!("the single value '{v}'"),
        YamlScalar::Other(kind) => kind,
    }))
}

impl<'de> Deserialize<'de> for YamlDocument {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DocumentVisitor)
    }
}

impl QuantConfig {
    /// Resolves a configuration from its sources, lowest priority first after the profile:
    /// environment, then YAML, then explicit settings.
    pub fn resolve(
        env: &Settings,
        yaml: Option<&Settings>,
        explicit: &Settings,
    ) -> Result<QuantConfig, ConfigError> {
        let sources: Vec<&Settings> = [Some(env), yaml, Some(explicit)]
            .into_iter()
            .flatten()
            .collect();
        // The profile first, by the same priority, since it supplies the defaults.
        let mut profile = Profile::Local;
        for source in &sources {
            if let Some(value) = source.get("profile") {
                profile = parse_profile(&source.origin, value)?;
            }
        }
        let mut config = profile.defaults();
        // Where each key was last set; keys absent here hold the profile's defaults.
        let mut set_by: HashMap<&str, &str> = HashMap::new();
        for source in &sources {
            for (key, value) in &source.values {
                config.apply(&source.origin, key, value)?;
                set_by.insert(key.as_str(), source.origin.as_str());
            }
        }
        // A GGUF scheme fixes its code width and block size. A width or group size the user
        // set must agree with it (the rule `quantize` applies in SQL); one left at the
        // profile's default takes the scheme's, so the manifest records what was used.
        if let Some(format) = config.scheme.gguf() {
            if !set_by.contains_key("bit_width") {
                config.bit_width = format.bits();
            }
            if !set_by.contains_key("group_size") {
                config.group_size = GroupSize::Fixed(format.block_values());
            }
        }
        config.check(&|key| {
            set_by
                .get(key)
                .copied()
                .unwrap_or("profile defaults")
                .to_string()
        })?;
        Ok(config)
    }

    /// A profile's defaults with the environment's overrides on top.
    pub fn from_profile(name: &str) -> Result<QuantConfig, ConfigError> {
        let mut explicit = Settings::new("profile argument");
        explicit.set("profile", Value::Text(name.to_string()));
        QuantConfig::resolve(&Settings::from_process_env()?, None, &explicit)
    }

    fn apply(&mut self, origin: &str, key: &str, value: &Value) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::BadValue {
            origin: origin.to_string(),
            key: key.to_string(),
            reason,
        };
        match key {
            "profile" => self.profile = parse_profile(origin, value)?,
            "bit_width" => self.bit_width = parse_bits(value).map_err(bad)?,
            "sensitive_bit_width" => self.sensitive_bit_width = parse_bits(value).map_err(bad)?,
            "group_size" => {
                self.group_size =
                    GroupSize::parse(&value.to_string()).map_err(|e| bad(e.to_string()))?;
            }
            "scheme" => {
                (self.scheme, self.encoder) = Scheme::parse_with_encoder(&value.to_string())
                    .map_err(|e| bad(e.to_string()))?;
            }
            "encoder" => {
                let text = value.to_string();
                self.encoder = Encoder::parse(&text).ok_or_else(|| {
                    bad(format!(
                        "unknown encoder '{text}': expected search or reference"
                    ))
                })?;
            }
            "min_cosine" => {
                let x = parse_number(value).map_err(bad)?;
                if !(x > 0.0 && x <= 1.0) {
                    return Err(bad(format!("{x} is not in (0, 1]")));
                }
                self.min_cosine = x;
            }
            "lambda_markov" | "lambda_entropy" => {
                let x = parse_number(value).map_err(bad)?;
                if !(x.is_finite() && x >= 0.0) {
                    return Err(bad(format!("{x} is not a number ≥ 0")));
                }
                if key == "lambda_markov" {
                    self.lambda_markov = x;
                } else {
                    self.lambda_entropy = x;
                }
            }
            "calibration" => {
                let path = value.to_string();
                self.calibration = (!path.trim().is_empty()).then_some(path);
            }
            "activation_bits" => {
                let bits = parse_count(value).map_err(bad)?;
                if !(2..=8).contains(&bits) {
                    return Err(bad(format!("{bits} bits is not supported (2 to 8)")));
                }
                self.activation_bits = bits as u8;
            }
            "timestep_groups" | "num_timesteps" => {
                let n = parse_count(value).map_err(bad)?;
                if !(1..=1_000_000).contains(&n) {
                    return Err(bad(format!("{n} is not between 1 and 1000000")));
                }
                if key == "timestep_groups" {
                    self.timestep_groups = n as u32;
                } else {
                    self.num_timesteps = n as u32;
                }
            }
            "grouping" => {
                self.grouping = parse_choice(value, &["uniform", "log", "adaptive"]).map_err(bad)?
            }
            "smoothing" => {
                self.smoothing =
                    parse_choice(value, &["none", "linear", "cubic", "sigmoid"]).map_err(bad)?
            }
            "optimize" => self.optimize = parse_bool(value).map_err(bad)?,
            "fallback" => self.fallback = parse_bool(value).map_err(bad)?,
            "pure" => self.pure = parse_bool(value).map_err(bad)?,
            "gguf_target" => {
                self.gguf_target = GgufTarget::parse(&value.to_string())
                    .ok_or_else(|| bad(format!("'{value}' is not comfyui or sd.cpp")))?
            }
            "max_size" => {
                let size = match value {
                    Value::Int(i) if *i > 0 => *i as u64,
                    Value::Int(i) => {
                        return Err(bad(format!("{i} is not a size of at least one byte")));
                    }
                    other => parse_size(&other.to_string()).map_err(bad)?,
                };
                self.max_size = Some(size);
            }
            "target_bpw" => {
                let x = parse_number(value).map_err(bad)?;
                if !(x > 0.0 && x <= 32.0) {
                    return Err(bad(format!(
                        "{x} bits per weight is not above 0 and at most 32"
                    )));
                }
                self.target_bpw = Some(x);
            }
            "candidates" => {
                let text = value.to_string();
                let mut list = Vec::new();
                for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let scheme = Scheme::parse(name).map_err(|e| bad(e.to_string()))?;
                    if !list.contains(&scheme) {
                        list.push(scheme);
                    }
                }
                if list.is_empty() {
                    return Err(bad(format!("'{text}' names no scheme")));
                }
                self.candidates = list;
            }
            "imatrix" => {
                let path = value.to_string();
                self.imatrix = (!path.trim().is_empty()).then_some(path);
            }
            "recipe" => {
                let text = value.to_string();
                self.recipe = (!text.trim().is_empty()).then(|| text.trim().to_string());
            }
            "tensor_type" => {
                let text = value.to_string();
                let mut overrides = Vec::new();
                for item in text.split(';').map(str::trim).filter(|n| !n.is_empty()) {
                    overrides.push(TensorType::parse(item).map_err(bad)?);
                }
                self.tensor_types = overrides;
            }
            "format" => {
                self.format = OutputFormat::parse(&value.to_string())
                    .ok_or_else(|| bad(format!("'{value}' is not parquet or gguf")))?
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    origin: origin.to_string(),
                    key: key.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The first key set here that only GGUF output takes, for the refusal of a Parquet run.
    pub fn gguf_only_key(&self) -> Option<&'static str> {
        [
            ("pure", self.pure),
            ("gguf_target", self.gguf_target != GgufTarget::ComfyUi),
            ("max_size", self.max_size.is_some()),
            ("target_bpw", self.target_bpw.is_some()),
            ("tensor_type", !self.tensor_types.is_empty()),
            ("recipe", self.recipe.is_some()),
            ("imatrix", self.imatrix.is_some()),
        ]
        .into_iter()
        .find_map(|(key, set)| set.then_some(key))
    }

    /// Whether formats are chosen per tensor under a size budget.
    pub fn allocating(&self) -> bool {
        self.max_size.is_some() || self.target_bpw.is_some()
    }

    /// Checks the combination: the scheme must accept the bit width and group size, and the
    /// schedule must hold the timestep groups.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.check(&|_| origin.to_string())
    }

    /// What ordinary weight tensors are quantized with: bit width, group size and scheme as
    /// the kernels take them (an error names the key that does not fit, as `validate` does).
    pub fn spec(&self) -> Result<QuantSpec, ConfigError> {
        self.spec_of(&|_| "configuration".to_string())
    }

    fn spec_of(&self, origin_of: &dyn Fn(&str) -> String) -> Result<QuantSpec, ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::BadValue {
            origin: origin_of(key),
            key: key.to_string(),
            reason,
        };
        QuantSpec::new(
            i64::from(self.bit_width),
            Some(self.group_size),
            self.scheme,
        )
        .and_then(|spec| spec.with_encoder(self.encoder))
        .map_err(|e| match e {
            KernelError::SchemeGroup { scheme, block, .. } => bad(
                "group_size",
                format!(
                    "scheme {scheme} uses blocks of {block} values, but group size {} was asked \
                     for (leave group_size out, or set it to {block})",
                    self.group_size
                ),
            ),
            KernelError::SchemeBits { .. } => bad("bit_width", e.to_string()),
            _ => bad("scheme", e.to_string()),
        })
    }

    /// [`validate`](Self::validate), naming the origin of each key through `origin_of`.
    fn check(&self, origin_of: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::BadValue {
            origin: origin_of(key),
            key: key.to_string(),
            reason,
        };
        self.spec_of(origin_of)?;
        if self.max_size.is_some() && self.target_bpw.is_some() {
            return Err(bad(
                "target_bpw",
                "max_size and target_bpw are two ways to give the same budget: give one".into(),
            ));
        }
        let allocating = self.allocating();
        if allocating && self.pure {
            let key = if self.max_size.is_some() {
                "max_size"
            } else {
                "target_bpw"
            };
            return Err(bad(
                key,
                "pure gives every tensor the scheme's type, bit allocation chooses one per \
                 tensor: give one of them"
                    .into(),
            ));
        }
        if self.recipe.is_some() && (allocating || self.pure) {
            return Err(bad(
                "recipe",
                "a recipe fixes every tensor's type by llama.cpp's rules; pure and bit \
                 allocation choose them otherwise: give one of them"
                    .into(),
            ));
        }
        if !allocating && !self.candidates.is_empty() {
            return Err(bad(
                "candidates",
                "the formats bit allocation chooses from: give max_size or target_bpw too".into(),
            ));
        }
        if self.timestep_groups > self.num_timesteps {
            return Err(bad(
                "timestep_groups",
                format!(
                    "{} groups for a schedule of {} timesteps (num_timesteps)",
                    self.timestep_groups, self.num_timesteps
                ),
            ));
        }
        Ok(())
    }
}

fn parse_profile(origin: &str, value: &Value) -> Result<Profile, ConfigError> {
    Profile::parse(&value.to_string()).ok_or_else(|| ConfigError::BadValue {
        origin: origin.to_string(),
        key: "profile".to_string(),
        reason: format!("unknown profile '{value}' (expected {})", Profile::NAMES),
    })
}

fn parse_number(value: &Value) -> Result<f64, String> {
    match value {
        Value::Int(i) => Ok(*i as f64),
        Value::Float(x) => Ok(*x),
        Value::Text(t) => t
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("'{t}' is not a number")),
        Value::Bool(b) => Err(format!("{b} is not a number")),
    }
}

fn parse_count(value: &Value) -> Result<i64, String> {
    match value {
        Value::Int(i) => Ok(*i),
        Value::Text(t) => t
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("'{t}' is not a whole number")),
        other => Err(format!("{other} is not a whole number")),
    }
}

fn parse_bool(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(format!("'{t}' is not true or false")),
        },
        other => Err(format!("{other} is not true or false")),
    }
}

fn parse_choice(value: &Value, choices: &[&str]) -> Result<String, String> {
    let text = value.to_string().trim().to_ascii_lowercase();
    if choices.contains(&text.as_str()) {
        Ok(text)
    } else {
        Err(format!(
            "unknown value '{value}' (expected {})",
            choices.join(", ")
        ))
    }
}

fn parse_bits(value: &Value) -> Result<u8, String> {
    let bits = match value {
        Value::Int(i) => *i,
        Value::Text(t) => t
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("'{t}' is not a whole number"))?,
        other => return Err(format!("{other} is not a whole number")),
    };
    match bits {
        2..=6 | 8 => Ok(bits as u8),
        _ => Err(format!("{bits} bits is not supported (2, 3, 4, 5, 6 or 8)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn profiles_give_their_defaults() {
        let none = Settings::new("flags");
        let c = QuantConfig::resolve(&env(&[]), None, &none).unwrap();
        assert_eq!(c, Profile::Local.defaults());
        for (name, bits) in [("edge", 2), ("local", 4), ("cloud", 8)] {
            let c =
                QuantConfig::resolve(&env(&[("ARROW_QUANT_PROFILE", name)]), None, &none).unwrap();
            assert_eq!(c.bit_width, bits, "{name}");
        }
        let edge = Profile::Edge.defaults();
        assert_eq!(
            (edge.activation_bits, edge.grouping.as_str(), edge.optimize),
            (4, "adaptive", true)
        );
        assert_eq!(c.calibration, None);
    }

    #[test]
    fn activation_keys_from_environment_and_yaml() {
        let yaml = Settings::from_yaml(
            "a.yaml",
            "calibration: acts.parquet\ngrouping: LOG\nsmoothing: cubic\noptimize: true\nlambda_markov: 2\n",
        )
        .unwrap();
        let c = QuantConfig::resolve(
            &env(&[
                ("ARROW_QUANT_TIMESTEP_GROUPS", "20"),
                ("ARROW_QUANT_OPTIMIZE", "no"),
            ]),
            Some(&yaml),
            &Settings::new("flags"),
        )
        .unwrap();
        assert_eq!(c.calibration.as_deref(), Some("acts.parquet"));
        assert_eq!(
            (c.grouping.as_str(), c.smoothing.as_str()),
            ("log", "cubic")
        );
        assert_eq!(
            (c.timestep_groups, c.optimize, c.lambda_markov),
            (20, true, 2.0)
        );
        let err = QuantConfig::resolve(
            &env(&[("ARROW_QUANT_OPTIMIZE", "maybe")]),
            None,
            &Settings::new("flags"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment: key 'optimize': 'maybe' is not true or false"
        );
    }

    #[test]
    fn priority_is_flags_then_yaml_then_env_then_profile() {
        let e = env(&[
            ("ARROW_QUANT_BIT_WIDTH", "2"),
            ("ARROW_QUANT_GROUP_SIZE", "128"),
        ]);
        // Environment over the profile.
        let c = QuantConfig::resolve(&e, None, &Settings::new("flags")).unwrap();
        assert_eq!((c.bit_width, &*c.group_size.to_string()), (2, "128"));
        // YAML over the environment.
        let y = Settings::from_yaml("c.yaml", "bit_width: 8\nprofile: cloud\n").unwrap();
        let c = QuantConfig::resolve(&e, Some(&y), &Settings::new("flags")).unwrap();
        assert_eq!((c.bit_width, &*c.group_size.to_string()), (8, "128"));
        assert_eq!(c.min_cosine, Profile::Cloud.defaults().min_cosine);
        // Flags over YAML.
        let mut f = Settings::new("flags");
        f.set("bit_width", Value::Int(4))
            .set("profile", Value::Text("edge".into()));
        let c = QuantConfig::resolve(&e, Some(&y), &f).unwrap();
        assert_eq!((c.profile, c.bit_width), (Profile::Edge, 4));
        assert_eq!(c.min_cosine, Profile::Edge.defaults().min_cosine);
    }

    #[test]
    fn bad_keys_and_values_name_the_key() {
        let none = Settings::new("flags");
        let err = |e: &Settings, y: Option<&Settings>| {
            QuantConfig::resolve(e, y, &none).unwrap_err().to_string()
        };
        let m = err(&env(&[("ARROW_QUANT_BITS", "4")]), None);
        assert!(m.contains("environment: unknown key 'bits'"), "{m}");
        let m = err(&env(&[("ARROW_QUANT_BIT_WIDTH", "four")]), None);
        assert!(m.contains("key 'bit_width'") && m.contains("'four'"), "{m}");
        let m = err(&env(&[("ARROW_QUANT_BIT_WIDTH", "7")]), None);
        assert!(m.contains("7 bits is not supported"), "{m}");
        let m = err(&env(&[("ARROW_QUANT_PROFILE", "mobile")]), None);
        assert!(m.contains("unknown profile 'mobile'"), "{m}");
        let m = Settings::from_yaml("c.yaml", "group_sise: 64\n")
            .unwrap_err()
            .to_string();
        assert!(m.contains("c.yaml: unknown key 'group_sise'"), "{m}");
        let y = Settings::from_yaml("c.yaml", "min_cosine: 1.5\n").unwrap();
        assert!(err(&env(&[]), Some(&y)).contains("key 'min_cosine'"));
        let y = Settings::from_yaml("c.yaml", "group_size: 7\n").unwrap();
        assert!(err(&env(&[]), Some(&y)).contains("key 'group_size'"));
        let y = Settings::from_yaml("c.yaml", "scheme: q8_0\nbit_width: 4\n").unwrap();
        let m = err(&env(&[]), Some(&y));
        assert_eq!(
            m,
            "c.yaml: key 'bit_width': scheme q8_0 stores 8-bit codes, but bits = 4 was asked for"
        );
        let bad = Settings::from_yaml("c.yaml", "- a\n- b\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            bad,
            "c.yaml: expected a mapping of configuration keys to values, got a list"
        );
    }

    /// Every YAML value of the wrong shape is refused with its key and what the key expects.
    #[test]
    fn yaml_errors_name_the_key() {
        let err = |text: &str| Settings::from_yaml("c.yaml", text).unwrap_err().to_string();
        let resolve_err = |text: &str| {
            let y = Settings::from_yaml("c.yaml", text).unwrap();
            QuantConfig::resolve(&env(&[]), Some(&y), &Settings::new("flags"))
                .unwrap_err()
                .to_string()
        };
        let null = "null (no value; leave the key out for the default)";
        for (text, message) in [
            (
                "bit_width:\n",
                format!("c.yaml: key 'bit_width': expected a bit width (2, 3, 4, 5, 6 or 8), got {null}"),
            ),
            (
                "calibration: ~\n",
                format!("c.yaml: key 'calibration': expected the path of a Parquet file, got {null}"),
            ),
            (
                "group_size: [32, 64]\n",
                "c.yaml: key 'group_size': expected a group size (16 to 4096) or 'row', got a list"
                    .to_string(),
            ),
            (
                "scheme: {name: q4_0}\n",
                "c.yaml: key 'scheme': expected a scheme name (asym, sym, asym_minmax, sym_minmax, \
                 q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl or iq4_xs; a \
                 GGUF one may end in ':reference'), got a mapping"
                    .to_string(),
            ),
            (
                "bits: 4\n",
                format!("c.yaml: unknown key 'bits' (known keys: {})", KEYS.join(", ")),
            ),
            (
                "bit_width: 4\nbit_width: 8\n",
                "c.yaml: key 'bit_width': given twice".to_string(),
            ),
            (
                "[a, b]: 4\n",
                "c.yaml: a key must be text, got a list".to_string(),
            ),
            ("42\n", "c.yaml: expected a mapping of configuration keys to values, got the single value '42'".to_string()),
            ("just text\n", "got the single value 'just text'".to_string()),
            ("profile: [edge\n", "c.yaml: not valid YAML".to_string()),
        ] {
            let m = err(text);
            assert!(m.contains(&message), "{text:?}: {m}");
        }
        // A tag the configuration does not know is a value of the wrong shape, named.
        let m = Settings::from_yaml("c.yaml", "bit_width: !wide 4\n")
            .map(|y| {
                QuantConfig::resolve(&env(&[]), Some(&y), &Settings::new("flags"))
                    .map(|c| c.bit_width.to_string())
                    .unwrap_or_else(|e| e.to_string())
            })
            .unwrap_or_else(|e| e.to_string());
        assert!(m == "4" || m.contains("key 'bit_width'"), "{m}");
        // Scalars of the wrong type for their key.
        assert_eq!(
            resolve_err("timestep_groups: 10.5\n"),
            "c.yaml: key 'timestep_groups': 10.5 is not a whole number"
        );
        assert_eq!(
            resolve_err("timestep_groups: 10.0\n"),
            "c.yaml: key 'timestep_groups': 10.0 is not a whole number"
        );
        assert_eq!(
            resolve_err("min_cosine: high\n"),
            "c.yaml: key 'min_cosine': 'high' is not a number"
        );
        assert!(resolve_err("scheme: 4\n").contains("c.yaml: key 'scheme': unknown scheme '4'"));
        assert!(resolve_err("optimize: 2\n").contains("key 'optimize': 2 is not true or false"));
        // Numbers out of their range, NaN and infinities.
        for text in [
            "min_cosine: .nan\n",
            "min_cosine: 2.0\n",
            "min_cosine: 0\n",
            "lambda_markov: .nan\n",
            "lambda_entropy: -1\n",
            "lambda_markov: .inf\n",
            "timestep_groups: 0\n",
            "timestep_groups: 1000000000\n",
            "num_timesteps: 0\n",
            "bit_width: 7\n",
            "bit_width: 1\n",
            "activation_bits: 9\n",
            "group_size: 8\n",
            "group_size: -64\n",
            "bit_width: 99999999999999999999999\n",
        ] {
            let key = text.split(':').next().unwrap();
            let m = resolve_err(text);
            assert!(
                m.starts_with(&format!("c.yaml: key '{key}': ")),
                "{text:?}: {m}"
            );
        }
        // An empty document, or only comments, sets nothing.
        for text in ["", "# nothing yet\n", "---\n"] {
            assert!(
                Settings::from_yaml("c.yaml", text)
                    .unwrap()
                    .values
                    .is_empty(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn yaml_files_that_are_not_text_or_too_large() {
        let dir = std::env::temp_dir().join(format!("arrowquant-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let binary = dir.join("binary.yaml");
        std::fs::write(&binary, b"bit_width: 4\nscheme: \xff\xfe\n").unwrap();
        let m = Settings::from_yaml_file(&binary).unwrap_err().to_string();
        assert!(
            m.ends_with("binary.yaml: not UTF-8 text (invalid byte at offset 21)"),
            "{m}"
        );
        let huge = dir.join("huge.yaml");
        let mut text = "bit_width: 4\n".to_string();
        text.push_str(&"# padding\n".repeat(200_000));
        std::fs::write(&huge, text).unwrap();
        let m = Settings::from_yaml_file(&huge).unwrap_err().to_string();
        assert!(m.contains("too large for a configuration file"), "{m}");
        let m = Settings::from_yaml_file(&dir.join("missing.yaml"))
            .unwrap_err()
            .to_string();
        assert!(m.contains("missing.yaml: No such file"), "{m}");
        let m = Settings::from_yaml_file(&dir).unwrap_err().to_string();
        assert!(m.starts_with(&dir.display().to_string()), "{m}");
        let many: String = (0..4 * KEYS.len() + 10)
            .map(|i| format!("k{i}: 1\n"))
            .collect();
        let m = Settings::from_yaml("c.yaml", &many)
            .unwrap_err()
            .to_string();
        assert!(m.contains("more than a configuration has"), "{m}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn environment_that_is_not_unicode() {
        use std::os::unix::ffi::OsStringExt;
        let raw = |b: &[u8]| OsString::from_vec(b.to_vec());
        // Someone else's variable: not decoded, not an error.
        let s = Settings::from_env([
            (raw(b"LESSCHARSET"), raw(b"latin\xff")),
            (raw(b"X\xff"), raw(b"1")),
            (raw(b"ARROW_QUANT_BIT_WIDTH"), raw(b"8")),
        ])
        .unwrap();
        assert_eq!(
            s.values,
            vec![("bit_width".to_string(), Value::Text("8".into()))]
        );
        let m = Settings::from_env([(raw(b"ARROW_QUANT_SCHEME"), raw(b"q4\xff0"))])
            .unwrap_err()
            .to_string();
        assert_eq!(
            m,
            "environment: key 'scheme': the value of ARROW_QUANT_SCHEME is not valid UTF-8"
        );
        let m = Settings::from_env([(raw(b"ARROW_QUANT_B\xffTS"), raw(b"4"))])
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("the name of ARROW_QUANT_B\u{fffd}TS is not valid UTF-8"),
            "{m}"
        );
    }

    /// A GGUF scheme's block size and width: an explicit group size or width that disagrees is
    /// refused (as `quantize` refuses it in SQL), a defaulted one takes the scheme's.
    #[test]
    fn gguf_scheme_against_group_size_and_width() {
        let none = Settings::new("flags");
        let flags = |pairs: &[(&str, &str)]| {
            let mut f = Settings::new("command line");
            for (k, v) in pairs {
                f.set(k, Value::Text(v.to_string()));
            }
            f
        };
        // Defaulted: the profile's 64 and 8 bits give way to the scheme's 32 and 4 bits.
        for profile in ["local", "cloud", "edge"] {
            let c = QuantConfig::resolve(
                &env(&[]),
                None,
                &flags(&[("profile", profile), ("scheme", "q4_0")]),
            )
            .unwrap();
            assert_eq!(
                (&*c.group_size.to_string(), c.bit_width),
                ("32", 4),
                "{profile}"
            );
        }
        let c = QuantConfig::resolve(&env(&[("ARROW_QUANT_SCHEME", "q8_0")]), None, &none).unwrap();
        assert_eq!((&*c.group_size.to_string(), c.bit_width), ("32", 8));
        // Explicit and agreeing.
        let c = QuantConfig::resolve(
            &env(&[]),
            None,
            &flags(&[("scheme", "q5_1"), ("group_size", "32"), ("bit_width", "5")]),
        )
        .unwrap();
        assert_eq!((&*c.group_size.to_string(), c.bit_width), ("32", 5));
        // Explicit and disagreeing, from each source, named with its source.
        let expected = |origin: &str, g: &str| {
            format!(
                "{origin}: key 'group_size': scheme q4_0 uses blocks of 32 values, but group size \
                 {g} was asked for (leave group_size out, or set it to 32)"
            )
        };
        let m = QuantConfig::resolve(
            &env(&[]),
            None,
            &flags(&[("scheme", "q4_0"), ("group_size", "64")]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(m, expected("command line", "64"));
        let m = QuantConfig::resolve(
            &env(&[
                ("ARROW_QUANT_SCHEME", "q4_0"),
                ("ARROW_QUANT_GROUP_SIZE", "row"),
            ]),
            None,
            &none,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(m, expected("environment", "row"));
        let y = Settings::from_yaml("c.yaml", "group_size: 128\n").unwrap();
        let m = QuantConfig::resolve(&env(&[]), Some(&y), &flags(&[("scheme", "q4_0")]))
            .unwrap_err()
            .to_string();
        assert_eq!(m, expected("c.yaml", "128"));
        let m = QuantConfig::resolve(
            &env(&[("ARROW_QUANT_BIT_WIDTH", "8")]),
            None,
            &flags(&[("scheme", "q4_1")]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            m,
            "environment: key 'bit_width': scheme q4_1 stores 4-bit codes, but bits = 8 was asked for"
        );
    }

    #[test]
    fn gguf_schemes_resolve_with_their_width() {
        let y = Settings::from_yaml("c.yaml", "scheme: q8_0\nbit_width: 8\n").unwrap();
        let c = QuantConfig::resolve(&env(&[]), Some(&y), &Settings::new("flags")).unwrap();
        assert_eq!((c.scheme.name(), c.bit_width), ("q8_0", 8));
    }
}

#[cfg(test)]
mod json_tests {
    use super::*;

    fn object(text: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_json_object_takes_the_yaml_keys() {
        let s = Settings::from_json(
            "config",
            &object(
                r#"{"profile": "edge", "group_size": 64, "min_cosine": 0.5, "fallback": false}"#,
            ),
        )
        .unwrap();
        let c = QuantConfig::resolve(&Settings::new("environment"), None, &s).unwrap();
        assert_eq!(c.profile, Profile::Edge);
        assert_eq!(c.group_size, GroupSize::Fixed(64));
        assert_eq!((c.min_cosine, c.fallback), (0.5, false));
        for (text, message) in [
            (
                r#"{"bits": 4}"#,
                "config: unknown key 'bits' (known keys: profile,",
            ),
            (
                r#"{"bit_width": null}"#,
                "config: key 'bit_width': expected a bit width (2, 3, 4, 5, 6 or 8), got null",
            ),
            (
                r#"{"scheme": ["q4_0"]}"#,
                "config: key 'scheme': expected a scheme name",
            ),
            (r#"{"fallback": {}}"#, "got an object"),
            (r#"{"max_size": 18446744073709551615}"#, "out of range"),
        ] {
            let e = Settings::from_json("config", &object(text))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(message) || e.contains(message), "{text}: {e}");
        }
        let s = Settings::from_json("config", &object(r#"{"bit_width": 7}"#)).unwrap();
        let e = QuantConfig::resolve(&Settings::new("environment"), None, &s)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config: key 'bit_width'"), "{e}");
    }
}
