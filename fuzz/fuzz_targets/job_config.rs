//! A server job's `config` object (`POST /v1/jobs`): the request body's JSON, through
//! `Settings::from_json` and `QuantConfig::resolve` as the jobs API calls them (no environment,
//! no YAML file). Whatever the bytes, the answer is a configuration or an error that names the
//! key, and a configuration resolved again from its own settings is the same configuration.

#![no_main]

use arrowquant_light::config::{QuantConfig, Settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(data) else {
        return;
    };
    let settings = match Settings::from_json("config", &object) {
        Ok(settings) => settings,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let environment = Settings::new("environment");
    match QuantConfig::resolve(&environment, None, &settings) {
        Ok(config) => {
            let again = QuantConfig::resolve(&environment, None, &settings)
                .expect("the same settings resolve again");
            assert_eq!(again, config, "resolving is not deterministic");
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
});
