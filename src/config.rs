//! `DiffusionQuantConfig`: what a quantization run does, from a profile, a YAML file,
//! `ARROW_QUANT_*` environment variables and explicit settings.
//!
//! Priority, highest first: explicit settings (CLI flags, a config object) > YAML > environment >
//! the profile's defaults. The profile itself is chosen by the same order. Every key is checked:
//! an unknown key or a bad value is an error that names the key and where it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use arrowquant_udfs::kernels::scheme::{GroupSize, QuantSpec, Scheme};
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
            Profile::Edge => (2, "32", 0.90),
            Profile::Local => (4, "64", 0.99),
            Profile::Cloud => (8, "64", 0.9999),
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
            group_size: group_size.to_string(),
            scheme: "asym".to_string(),
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
    /// Values per group: a number, or `row` for one group per row.
    pub group_size: String,
    /// `asym`, `sym`, `asym_minmax`, `sym_minmax`, or a GGUF scheme (`q4_0`, ...).
    pub scheme: String,
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
}

impl Default for QuantConfig {
    fn default() -> Self {
        Profile::Local.defaults()
    }
}

/// The keys a configuration accepts (YAML keys; `ARROW_QUANT_` + upper case in the environment).
pub const KEYS: [&str; 16] = [
    "profile",
    "bit_width",
    "group_size",
    "scheme",
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
            Value::Float(x) => write!(f, "{x}"),
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

    /// The settings of a YAML file: a mapping of keys to scalars.
    pub fn from_yaml_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Settings::from_yaml(&path.display().to_string(), &text)
    }

    pub fn from_yaml(origin: &str, text: &str) -> Result<Settings, ConfigError> {
        let map: Option<BTreeMap<String, Value>> =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::File {
                path: origin.to_string(),
                reason: format!("not a mapping of configuration keys to values: {e}"),
            })?;
        let mut settings = Settings::new(origin);
        for (key, value) in map.unwrap_or_default() {
            settings.set(&key, value);
        }
        Ok(settings)
    }

    /// `ARROW_QUANT_*` variables from an environment (pass `std::env::vars()`).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Settings {
        let mut settings = Settings::new("environment");
        let mut found: Vec<(String, String)> = vars
            .into_iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("ARROW_QUANT_")
                    .map(|rest| (rest.to_string(), v))
            })
            .collect();
        found.sort();
        for (key, value) in found {
            settings.set(&key.to_ascii_lowercase(), Value::Text(value));
        }
        settings
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
        for source in &sources {
            for (key, value) in &source.values {
                config.apply(&source.origin, key, value)?;
            }
        }
        config.validate("configuration")?;
        Ok(config)
    }

    /// A profile's defaults with the environment's overrides on top.
    pub fn from_profile(name: &str) -> Result<QuantConfig, ConfigError> {
        let mut explicit = Settings::new("profile argument");
        explicit.set("profile", Value::Text(name.to_string()));
        QuantConfig::resolve(&Settings::from_env(std::env::vars()), None, &explicit)
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
                let text = value.to_string();
                GroupSize::parse(&text).map_err(|e| bad(e.to_string()))?;
                self.group_size = text.trim().to_ascii_lowercase();
            }
            "scheme" => {
                let text = value.to_string();
                Scheme::parse(&text).map_err(|e| bad(e.to_string()))?;
                self.scheme = text.trim().to_ascii_lowercase();
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
            _ => {
                return Err(ConfigError::UnknownKey {
                    origin: origin.to_string(),
                    key: key.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Checks the combination: the scheme must accept the bit width and group size.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let scheme = Scheme::parse(&self.scheme).expect("checked when set");
        let group = GroupSize::parse(&self.group_size).expect("checked when set");
        let group = if scheme.gguf().is_some() {
            None
        } else {
            Some(group)
        };
        QuantSpec::new(i64::from(self.bit_width), group, scheme).map_err(|e| {
            ConfigError::BadValue {
                origin: origin.to_string(),
                key: "scheme".to_string(),
                reason: e.to_string(),
            }
        })?;
        if self.timestep_groups > self.num_timesteps {
            return Err(ConfigError::BadValue {
                origin: origin.to_string(),
                key: "timestep_groups".to_string(),
                reason: format!(
                    "{} groups for a schedule of {} timesteps (num_timesteps)",
                    self.timestep_groups, self.num_timesteps
                ),
            });
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
        Settings::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
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
        assert_eq!((c.bit_width, c.group_size.as_str()), (2, "128"));
        // YAML over the environment.
        let y = Settings::from_yaml("c.yaml", "bit_width: 8\nprofile: cloud\n").unwrap();
        let c = QuantConfig::resolve(&e, Some(&y), &Settings::new("flags")).unwrap();
        assert_eq!((c.bit_width, c.group_size.as_str()), (8, "128"));
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
        let y = Settings::from_yaml("c.yaml", "group_sise: 64\n").unwrap();
        let m = err(&env(&[]), Some(&y));
        assert!(m.contains("c.yaml: unknown key 'group_sise'"), "{m}");
        let y = Settings::from_yaml("c.yaml", "min_cosine: 1.5\n").unwrap();
        assert!(err(&env(&[]), Some(&y)).contains("key 'min_cosine'"));
        let y = Settings::from_yaml("c.yaml", "group_size: 7\n").unwrap();
        assert!(err(&env(&[]), Some(&y)).contains("key 'group_size'"));
        let y = Settings::from_yaml("c.yaml", "scheme: q8_0\n").unwrap();
        let m = err(&env(&[]), Some(&y));
        assert!(m.contains("key 'scheme'"), "{m}");
        let bad = Settings::from_yaml("c.yaml", "- a\n- b\n")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("c.yaml: not a mapping"), "{bad}");
    }

    #[test]
    fn gguf_schemes_resolve_with_their_width() {
        let y = Settings::from_yaml("c.yaml", "scheme: q8_0\nbit_width: 8\n").unwrap();
        let c = QuantConfig::resolve(&env(&[]), Some(&y), &Settings::new("flags")).unwrap();
        assert_eq!((c.scheme.as_str(), c.bit_width), ("q8_0", 8));
    }
}
