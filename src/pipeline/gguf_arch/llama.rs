//! Llama decoders (`LlamaForCausalLM` folders: `config.json`, safetensors weights, sharded or
//! not, `tokenizer.json`) as llama.cpp's `llama` architecture, key for key what llama.cpp's
//! `convert_hf_to_gguf.py` (`LlamaModel`) writes: `config.json`'s hyperparameters, the byte-level
//! BPE tokenizer ([`BpeVocab`]), llama.cpp's tensor names, and the query and key projections'
//! rows in llama.cpp's rotary order ([`RowOrder::RotaryPairs`]). Without `lm_head.weight` the
//! file has no `output.weight` and llama.cpp uses the token embeddings (tied embeddings).
//!
//! Refused, naming the file and key: a missing hyperparameter, an activation other than SiLU,
//! biases (`attention_bias`, `mlp_bias`), and any `rope_scaling` (Llama 3.1's `llama3`, linear,
//! YaRN, ...: llama.cpp needs scaling keys or a `rope_freqs` tensor this writer does not make).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use datafusion::common::Result;
use serde_json::Value;

use super::bpe_vocab::BpeVocab;
use super::llama_names::{DROPPED_IN_LAYER, LAYER, LAYER_PREFIX, OUTPUT, ROTARY, SUFFIX, WHOLE};
use super::{ArchLayout, RowOrder, plan_error, string, u32_key};
use crate::model::gguf_write::MetaValue;
use crate::model::{ConfigFile, Model};

pub const ARCH: &str = "llama";

/// The model's own `config.json` when it describes a Llama decoder.
pub fn config(model: &Model) -> Option<&ConfigFile> {
    model.configs.iter().find(|c| {
        c.component.is_empty()
            && c.path.file_name().is_some_and(|n| n == "config.json")
            && (c.json.get("model_type").and_then(Value::as_str) == Some("llama")
                || c.json
                    .get("architectures")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("LlamaForCausalLM"))))
    })
}

/// The file's keys, names and row orders, or an error naming what is missing or unsupported.
pub fn layout(model: &Model, config: &ConfigFile, name: &str) -> Result<ArchLayout> {
    let dir = config.path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let hp = Hyper::read(config)?;
    let mut read = Vec::new();
    let vocab = BpeVocab::read(&dir, hp.vocab_size, &config.json, &mut read)?;
    let pre = vocab.pre();
    let (names, dropped, reordered) = tensor_names(model, &hp)?;
    let tied = !names.iter().flatten().any(|n| n == "output.weight");

    let mut m = vec![
        string("general.architecture", ARCH),
        string("general.name", name),
    ];
    let key = |k: &str| format!("{ARCH}.{k}");
    m.push(u32_key(&key("vocab_size"), hp.vocab_size));
    m.push(u32_key(&key("context_length"), hp.context));
    m.push(u32_key(&key("embedding_length"), hp.embedding));
    m.push(u32_key(&key("block_count"), hp.blocks));
    m.push(u32_key(&key("feed_forward_length"), hp.feed_forward));
    m.push(u32_key(&key("rope.dimension_count"), hp.head_dim));
    m.push(u32_key(&key("attention.head_count"), hp.heads));
    m.push(u32_key(&key("attention.head_count_kv"), hp.heads_kv));
    if hp.head_dim * hp.heads != hp.embedding {
        m.push(u32_key(&key("attention.key_length"), hp.head_dim));
        m.push(u32_key(&key("attention.value_length"), hp.head_dim));
    }
    m.push((
        key("attention.layer_norm_rms_epsilon"),
        MetaValue::F32(hp.rms_eps),
    ));
    m.push((key("rope.freq_base"), MetaValue::F32(hp.rope_theta)));
    m.extend(vocab.metadata());

    Ok(ArchLayout {
        architecture: ARCH.into(),
        metadata: m,
        names,
        dropped,
        read,
        note: format!(
            "GGUF for llama.cpp: architecture llama, {} blocks, {} heads ({} for keys and \
             values), {} tokens (byte-level BPE, pre-tokenizer {pre}), {}; q and k rows in \
             llama.cpp's rotary order",
            hp.blocks,
            hp.heads,
            hp.heads_kv,
            hp.vocab_size,
            if tied {
                "output tied to token_embd"
            } else {
                "own output head"
            }
        ),
        reordered,
    })
}

/// The hyperparameters llama.cpp's Llama loader reads.
#[derive(Debug)]
struct Hyper {
    context: u32,
    embedding: u32,
    feed_forward: u32,
    blocks: u32,
    heads: u32,
    heads_kv: u32,
    head_dim: u32,
    rms_eps: f32,
    rope_theta: f32,
    vocab_size: u32,
}

impl Hyper {
    fn read(config: &ConfigFile) -> Result<Hyper> {
        let path = config.path.display();
        let json = &config.json;
        let positive = |key: &str, v: &Value| -> Result<u32> {
            v.as_u64()
                .filter(|&n| n > 0)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    plan_error(format!("{path}: '{key}' is {v}, not a positive integer"))
                })
        };
        let int = |key: &str, gguf: &str| -> Result<u32> {
            let v = json.get(key).ok_or_else(|| {
                plan_error(format!(
                    "{path}: Llama without '{key}', which llama.cpp needs as {ARCH}.{gguf}"
                ))
            })?;
            positive(key, v)
        };
        let float = |key: &str, v: &Value| -> Result<f32> {
            v.as_f64()
                .filter(|e| e.is_finite() && *e > 0.0)
                .map(|e| e as f32)
                .ok_or_else(|| plan_error(format!("{path}: '{key}' is {v}, not a positive number")))
        };
        let act = json
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(plan_error(format!(
                "{path}: hidden_act '{act}': llama.cpp's Llama feed-forward is SiLU-gated"
            )));
        }
        for key in ["attention_bias", "mlp_bias"] {
            if json.get(key).and_then(Value::as_bool) == Some(true) {
                return Err(plan_error(format!(
                    "{path}: '{key}' is true: Llama biases are not supported"
                )));
            }
        }
        if let Some(s) = json.get("rope_scaling").filter(|s| !s.is_null()) {
            let ty = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Value::as_str);
            if ty != Some("default") {
                return Err(plan_error(format!(
                    "{path}: rope_scaling {s}: not supported (llama.cpp needs its scaling keys \
                     or a rope_freqs tensor, which ArrowQuant does not write)"
                )));
            }
        }
        let eps = json.get("rms_norm_eps").ok_or_else(|| {
            plan_error(format!(
                "{path}: Llama without 'rms_norm_eps', which llama.cpp needs as \
                 {ARCH}.attention.layer_norm_rms_epsilon"
            ))
        })?;
        let heads = int("num_attention_heads", "attention.head_count")?;
        let embedding = int("hidden_size", "embedding_length")?;
        let heads_kv = match json.get("num_key_value_heads") {
            None | Some(Value::Null) => heads,
            Some(v) => positive("num_key_value_heads", v)?,
        };
        let head_dim = match json.get("head_dim") {
            None | Some(Value::Null) => {
                if !embedding.is_multiple_of(heads) {
                    return Err(plan_error(format!(
                        "{path}: hidden_size {embedding} is not a multiple of \
                         num_attention_heads {heads}"
                    )));
                }
                embedding / heads
            }
            Some(v) => positive("head_dim", v)?,
        };
        if !heads.is_multiple_of(heads_kv) {
            return Err(plan_error(format!(
                "{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads \
                 {heads_kv}"
            )));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(plan_error(format!(
                "{path}: heads of {head_dim} values: RoPE rotates pairs, so an even head size"
            )));
        }
        Ok(Hyper {
            context: int("max_position_embeddings", "context_length")?,
            embedding,
            feed_forward: int("intermediate_size", "feed_forward_length")?,
            blocks: int("num_hidden_layers", "block_count")?,
            heads,
            heads_kv,
            head_dim,
            rms_eps: float("rms_norm_eps", eps)?,
            // transformers' LlamaConfig default, which llama.cpp's is too.
            rope_theta: match json.get("rope_theta") {
                None | Some(Value::Null) => 10_000.0,
                Some(v) => float("rope_theta", v)?,
            },
            vocab_size: int("vocab_size", "vocab_size")?,
        })
    }

    /// The shape (row-major) llama.cpp's loader expects of a GGUF stem.
    fn shape(&self, stem: &str) -> Vec<usize> {
        let [e, f, v] = [self.embedding, self.feed_forward, self.vocab_size].map(|n| n as usize);
        let q = (self.heads * self.head_dim) as usize;
        let kv = (self.heads_kv * self.head_dim) as usize;
        match stem {
            "token_embd" | "output" => vec![v, e],
            "attn_q" => vec![q, e],
            "attn_k" | "attn_v" => vec![kv, e],
            "attn_output" => vec![e, q],
            "ffn_gate" | "ffn_up" => vec![f, e],
            "ffn_down" => vec![e, f],
            _ => vec![e],
        }
    }
}

/// What becomes of one checkpoint name: llama.cpp's stem and name, or why it is left out.
enum Mapped {
    Name { stem: &'static str, name: String },
    Dropped(&'static str),
}

/// llama.cpp's name of a checkpoint tensor, `None` when the table does not know it.
fn map_name(checkpoint: &str, blocks: u32) -> Option<Mapped> {
    if let Some(rest) = checkpoint.strip_prefix(LAYER_PREFIX) {
        let (n, rest) = rest.split_once('.')?;
        let n: u32 = n.parse().ok().filter(|&n| n < blocks)?;
        if let Some((_, why)) = DROPPED_IN_LAYER.iter().find(|(d, _)| *d == rest) {
            return Some(Mapped::Dropped(why));
        }
        let stem = rest.strip_suffix(SUFFIX)?;
        let (_, to) = LAYER.iter().find(|(from, _)| *from == stem)?;
        return Some(Mapped::Name {
            stem: to,
            name: format!("blk.{n}.{to}{SUFFIX}"),
        });
    }
    let stem = checkpoint.strip_suffix(SUFFIX)?;
    let (_, to) = WHOLE.iter().find(|(from, _)| *from == stem)?;
    Some(Mapped::Name {
        stem: to,
        name: format!("{to}{SUFFIX}"),
    })
}

#[allow(clippy::type_complexity)]
/// Every tensor's name in the file (or `None`, left out), the ones left out with why, and the
/// rotary ones' row order; an error naming tensors the table does not know, tensors of another
/// shape than `config.json` gives, and the ones llama.cpp needs that are missing.
fn tensor_names(
    model: &Model,
    hp: &Hyper,
) -> Result<(
    Vec<Option<String>>,
    Vec<(String, String)>,
    HashMap<String, RowOrder>,
)> {
    let mut names = Vec::with_capacity(model.tensors.len());
    let mut dropped = Vec::new();
    let mut unknown = Vec::new();
    let mut reordered = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    for t in &model.tensors {
        match map_name(&t.layer, hp.blocks) {
            Some(Mapped::Name { stem, name }) => {
                let want = hp.shape(stem);
                if t.meta.shape != want {
                    return Err(plan_error(format!(
                        "Llama checkpoint: tensor '{}' has shape {:?}, but config.json's \
                         hyperparameters give llama.cpp's '{name}' {want:?}",
                        t.layer, t.meta.shape
                    )));
                }
                if !crate::model::is_float(t.meta.dtype) {
                    return Err(plan_error(format!(
                        "Llama checkpoint: tensor '{}' is not a float tensor",
                        t.layer
                    )));
                }
                if ROTARY.contains(&stem) {
                    reordered.insert(
                        t.layer.clone(),
                        RowOrder::RotaryPairs {
                            head_dim: hp.head_dim as u64,
                        },
                    );
                }
                // Two checkpoint tensors cannot map to one name: the table is one to one.
                seen.insert(name.clone());
                names.push(Some(name));
            }
            Some(Mapped::Dropped(why)) => {
                dropped.push((t.layer.clone(), why.to_string()));
                names.push(None);
            }
            None => {
                unknown.push(t.layer.clone());
                names.push(None);
            }
        }
    }
    if !unknown.is_empty() {
        return Err(plan_error(format!(
            "Llama checkpoint: no llama.cpp name for {} tensor(s): {} (llama.cpp refuses a \
             file with tensors its Llama graph does not use)",
            unknown.len(),
            unknown.join(", ")
        )));
    }
    let mut missing = Vec::new();
    let mut want = |n: String| {
        if !seen.contains(&n) {
            missing.push(n);
        }
    };
    for (_, to) in WHOLE.iter().filter(|(_, to)| *to != OUTPUT) {
        want(format!("{to}{SUFFIX}"));
    }
    for n in 0..hp.blocks {
        for (_, to) in LAYER {
            want(format!("blk.{n}.{to}{SUFFIX}"));
        }
    }
    if !missing.is_empty() {
        return Err(plan_error(format!(
            "Llama checkpoint: missing {} tensor(s) llama.cpp's Llama loader needs: {}",
            missing.len(),
            missing.join(", ")
        )));
    }
    Ok((names, dropped, reordered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(name: &str) -> Option<String> {
        match map_name(name, 2)? {
            Mapped::Name { name, .. } => Some(name),
            Mapped::Dropped(_) => Some("-".into()),
        }
    }

    #[test]
    fn names_are_llama_cpps() {
        let cases = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.1.input_layernorm.weight",
                "blk.1.attn_norm.weight",
            ),
            (
                "model.layers.0.self_attn.q_proj.weight",
                "blk.0.attn_q.weight",
            ),
            (
                "model.layers.0.self_attn.k_proj.weight",
                "blk.0.attn_k.weight",
            ),
            (
                "model.layers.0.self_attn.v_proj.weight",
                "blk.0.attn_v.weight",
            ),
            (
                "model.layers.0.self_attn.o_proj.weight",
                "blk.0.attn_output.weight",
            ),
            (
                "model.layers.1.post_attention_layernorm.weight",
                "blk.1.ffn_norm.weight",
            ),
            (
                "model.layers.0.mlp.gate_proj.weight",
                "blk.0.ffn_gate.weight",
            ),
            ("model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight"),
            (
                "model.layers.0.mlp.down_proj.weight",
                "blk.0.ffn_down.weight",
            ),
            ("model.layers.0.self_attn.rotary_emb.inv_freq", "-"),
        ];
        for (from, to) in cases {
            assert_eq!(mapped(from).as_deref(), Some(to), "{from}");
        }
        assert_eq!(mapped("model.layers.2.mlp.up_proj.weight"), None);
        assert_eq!(mapped("model.layers.0.self_attn.q_proj.bias"), None);
        assert_eq!(mapped("model.embed_tokens.bias"), None);
        assert_eq!(mapped("score.weight"), None);
    }
}
