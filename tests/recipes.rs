//! ArrowQuant's llama.cpp recipes (`pipeline::recipes`) against the types llama.cpp's own
//! quantizer writes: tests/data/recipes/llama_cpp_types.json, recorded by
//! benches/llama_cpp/record_recipes.py with llama-cpp-python 0.3.36. For every model, recipe and
//! tensor, the rule's type after the row-width fallback (applied as the GGUF writer applies it,
//! `QuantSpec::for_gguf_row` on the innermost dimension, else F16) must be llama.cpp's.

use std::path::Path;

use arrowquant::model::gguf_file::GgmlType;
use arrowquant::pipeline::gguf_select::kept_by_llama_cpp;
use arrowquant::pipeline::recipes::{
    ModelParams, Recipe, RecipeError, RuleType, assign, llama_cpp_types,
};
use arrowquant::udfs::kernels::scheme::{QuantSpec, Scheme};
use serde_json::Value;

fn recorded() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/recipes/llama_cpp_types.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("the recorded types are JSON")
}

fn param(hparams: &Value, key: &str) -> Option<u32> {
    hparams[key]
        .as_u64()
        .map(|v| u32::try_from(v).expect("a small hyper-parameter"))
}

/// The type a row of `ne0` values is stored in when the rules chose `ty`: the writer's fallback
/// for our schemes; for a type we cannot write, llama.cpp's (the i-quants of 256 fall back to
/// IQ4_NL), so that the rules are checked for those too.
fn stored(ty: GgmlType, ne0: u64) -> &'static str {
    if let Some(scheme) = Scheme::from_ggml_type(ty.id) {
        let bits = scheme.gguf().expect("a GGUF scheme").bits();
        let spec = QuantSpec::new(i64::from(bits), None, scheme).expect("a GGUF spec");
        let ne0 = usize::try_from(ne0).expect("a row length");
        return match spec.for_gguf_row(ne0) {
            Some(s) => {
                GgmlType::from_id(s.scheme.ggml_type().expect("a GGUF type"))
                    .expect("a ggml type")
                    .name
            }
            None => "F16",
        };
    }
    if ne0.is_multiple_of(u64::from(ty.block_values)) {
        ty.name
    } else if matches!(ty.name, "IQ3_S" | "IQ3_XXS" | "IQ2_S") && ne0.is_multiple_of(32) {
        "IQ4_NL"
    } else {
        "F16"
    }
}

#[test]
fn every_recipe_gives_every_tensor_llama_cpps_type() {
    let doc = recorded();
    let legend = &doc["types"];
    let mut checked = 0usize;
    let mut refused_by_us = 0usize;
    let mut mismatches = Vec::new();
    let mut pairs = 0usize;
    for model in doc["models"].as_array().expect("models") {
        let name = model["name"].as_str().expect("a model name");
        let arch = model["architecture"].as_str().expect("an architecture");
        let hp = &model["hparams"];
        let params = ModelParams {
            n_layer: param(hp, "n_layer"),
            n_head: param(hp, "n_head"),
            n_head_kv: param(hp, "n_head_kv"),
            n_expert: param(hp, "n_expert"),
        };
        let owned: Vec<(String, Vec<u64>)> = model["tensors"]
            .as_array()
            .expect("tensors")
            .iter()
            .map(|t| {
                let dims = t[1].as_array().expect("dims");
                let dims = dims.iter().map(|d| d.as_u64().expect("a dim")).collect();
                (t[0].as_str().expect("a name").to_string(), dims)
            })
            .collect();
        let tensors: Vec<(&str, &[u64])> = owned
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();

        let variants = [("recipes", false), ("recipes_with_imatrix", true)];
        for (key, imatrix) in variants {
            let Some(recipes) = model[key].as_object() else {
                continue;
            };
            let name = if imatrix {
                format!("{name} (imatrix)")
            } else {
                name.to_string()
            };
            for (recipe_name, codes) in recipes {
                let recipe = Recipe::parse(recipe_name).expect("a recipe we know");
                let Some(codes) = codes.as_str() else {
                    // llama.cpp refused it (an importance matrix is needed): nothing to compare
                    continue;
                };
                let types: Vec<&str> = codes
                    .chars()
                    .map(|c| {
                        legend[c.to_string().as_str()]
                            .as_str()
                            .expect("a type letter")
                    })
                    .collect();
                pairs += 1;
                assert_eq!(types.len(), tensors.len(), "{name} {recipe_name}");
                let ours = llama_cpp_types(recipe, arch, &params, imatrix, &tensors)
                    .unwrap_or_else(|e| panic!("{name} {recipe_name}: {e}"));
                let mut by_index: Vec<Option<&RuleType>> = vec![None; tensors.len()];
                for t in &ours {
                    by_index[t.index] = Some(t);
                }
                for (i, ((tensor, dims), theirs)) in tensors.iter().zip(types).enumerate() {
                    let (mine, why) = match (kept_by_llama_cpp(tensor, dims), by_index[i]) {
                        (Some(_), None) => ("F32", None),
                        (None, Some(t)) => (stored(t.ggml, dims[0]), t.reason.as_deref()),
                        (kept, rule) => panic!("{tensor}: kept {kept:?} but a rule {rule:?}"),
                    };
                    checked += 1;
                    if mine != theirs {
                        mismatches.push(format!(
                        "{name} {recipe_name} {tensor} {dims:?}: ours {mine} ({}), llama.cpp {theirs}",
                        why.unwrap_or("base type")
                    ));
                    }
                }

                // assign gives the same schemes, or refuses at the first type it cannot write
                let missing = ours
                    .iter()
                    .find(|t| Scheme::from_ggml_type(t.ggml.id).is_none());
                match (assign(recipe, arch, &params, imatrix, &tensors), missing) {
                    (Ok(a), None) => {
                        assert_eq!(a.len(), ours.len());
                        for (a, t) in a.iter().zip(&ours) {
                            assert_eq!((a.index, a.scheme.ggml_type()), (t.index, Some(t.ggml.id)));
                        }
                    }
                    (Err(RecipeError::NoScheme { tensor, ggml, .. }), Some(t)) => {
                        assert_eq!((tensor.as_str(), ggml), (t.name.as_str(), t.ggml.name));
                        refused_by_us += 1;
                    }
                    (other, missing) => panic!("{name} {recipe_name}: {other:?} with {missing:?}"),
                }
            }
        }
    }
    eprintln!(
        "recipes: {checked} (model, recipe, tensor) types checked over {pairs} (model, recipe) \
         pairs, {} mismatches; assign refused {refused_by_us} pairs for a type without a scheme",
        mismatches.len()
    );
    assert!(checked > 10_000, "only {checked} types checked");
    assert!(refused_by_us > 0, "no recipe needed a type we lack");
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn the_recording_covers_every_recipe_and_the_rules_that_matter() {
    let doc = recorded();
    let models = doc["models"].as_array().expect("models");
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    for want in [
        "bert",
        "llama-32-gqa",
        "llama-8-tied",
        "llama-80-gqa",
        "llama-8-moe",
        "falcon-8",
    ] {
        assert!(names.contains(&want), "{want} not recorded: {names:?}");
    }
    for m in models {
        let recorded: Vec<&String> = m["recipes"].as_object().unwrap().keys().collect();
        for name in Recipe::NAMES {
            assert!(
                recorded.iter().any(|r| *r == name),
                "{} lacks {name}",
                m["name"]
            );
        }
    }
}
