//! The configuration: a YAML file's text, `ARROW_QUANT_*` environment variables and explicit
//! settings (what the command line's flags give), through `QuantConfig::resolve` as
//! `arrowquant quantize` calls it. The input is text: the YAML, then optionally a line
//! `---ENV---` followed by `NAME=value` lines, then optionally `---FLAGS---` followed by
//! `key=value` lines (`true`/`false`, integers and numbers are typed as the flags are).
//! Whatever the text, the answer is a configuration or an error, and a configuration resolved
//! again from its own values is the same configuration.

#![no_main]

use arrowquant_light::config::{QuantConfig, Settings, Value};
use libfuzzer_sys::fuzz_target;

fn pairs(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn typed(text: &str) -> Value {
    if let Ok(b) = text.parse::<bool>() {
        Value::Bool(b)
    } else if let Ok(i) = text.parse::<i64>() {
        Value::Int(i)
    } else if let Ok(x) = text.parse::<f64>() {
        Value::Float(x)
    } else {
        Value::Text(text.to_string())
    }
}

/// Explicit settings that say every value of `config`.
fn settings_of(config: &QuantConfig) -> Settings {
    let mut s = Settings::new("round trip");
    s.set("profile", Value::Text(config.profile.name().to_string()))
        .set("bit_width", Value::Int(config.bit_width.into()))
        .set("group_size", Value::Text(config.group_size.to_string()))
        .set("scheme", Value::Text(config.scheme.to_string()))
        .set("min_cosine", Value::Float(config.min_cosine))
        .set(
            "sensitive_bit_width",
            Value::Int(config.sensitive_bit_width.into()),
        )
        .set("fallback", Value::Bool(config.fallback))
        .set("activation_bits", Value::Int(config.activation_bits.into()))
        .set("timestep_groups", Value::Int(config.timestep_groups.into()))
        .set("num_timesteps", Value::Int(config.num_timesteps.into()))
        .set("grouping", Value::Text(config.grouping.clone()))
        .set("smoothing", Value::Text(config.smoothing.clone()))
        .set("optimize", Value::Bool(config.optimize))
        .set("lambda_markov", Value::Float(config.lambda_markov))
        .set("lambda_entropy", Value::Float(config.lambda_entropy));
    if let Some(path) = &config.calibration {
        s.set("calibration", Value::Text(path.clone()));
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (yaml, rest) = match text.split_once("\n---ENV---\n") {
        Some((yaml, rest)) => (yaml, rest),
        None => (&*text, ""),
    };
    let (env, flags) = rest.split_once("\n---FLAGS---\n").unwrap_or((rest, ""));
    let yaml = match Settings::from_yaml("fuzz.yaml", yaml) {
        Ok(settings) => Some(settings),
        Err(e) => {
            let _ = e.to_string();
            None
        }
    };
    let env = match Settings::from_env(pairs(env)) {
        Ok(settings) => settings,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let mut explicit = Settings::new("flags");
    for (key, value) in pairs(flags) {
        explicit.set(&key, typed(&value));
    }
    match QuantConfig::resolve(&env, yaml.as_ref(), &explicit) {
        Ok(config) => {
            let again =
                QuantConfig::resolve(&Settings::new("environment"), None, &settings_of(&config))
                    .expect("a resolved configuration resolves again");
            assert_eq!(
                again, config,
                "a resolved configuration changes when resolved again"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
