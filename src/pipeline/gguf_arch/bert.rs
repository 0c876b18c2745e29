//! BERT encoders (`BertModel`, sentence-transformers folders) as llama.cpp's `bert`
//! architecture: the hyperparameters of `config.json`, the pooling of sentence-transformers'
//! `1_Pooling/config.json`, the WordPiece vocabulary of `vocab.txt`, llama.cpp's tensor names.
//! Key for key what gguf-py's writer gives in `benches/llama_cpp/make_f32_gguf.py` (and
//! llama.cpp's `convert_hf_to_gguf.py`, `BertModel`), whose file llama.cpp loads.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use datafusion::common::Result;

use super::bert_names::{
    DROPPED_NAMES, DROPPED_PREFIXES, EMBEDDINGS, LAYER, LAYER_PREFIX, MODEL_PREFIX, SUFFIXES,
};
use super::{ArchLayout, bool_key, plan_error, read_file, read_json, string, u32_key};
use crate::model::gguf_file::ValueType;
use crate::model::gguf_write::MetaValue;
use crate::model::{ConfigFile, Model};

pub const ARCH: &str = "bert";

/// gguf-py's `TokenType`.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;

/// llama.cpp's `llama_pooling_type`.
const POOLING_MEAN: u32 = 1;
const POOLING_CLS: u32 = 2;
const POOLING_LAST: u32 = 3;

/// The special tokens llama.cpp's WPM vocabulary needs, and their GGUF keys (gguf-py spells
/// the separator's `seperator`, and llama.cpp reads it so).
const SPECIAL: &[(&str, &str)] = &[
    ("[CLS]", "tokenizer.ggml.bos_token_id"),
    ("[SEP]", "tokenizer.ggml.seperator_token_id"),
    ("[UNK]", "tokenizer.ggml.unknown_token_id"),
    ("[PAD]", "tokenizer.ggml.padding_token_id"),
    ("[MASK]", "tokenizer.ggml.mask_token_id"),
];

/// The model's own `config.json` when it describes a BERT encoder.
pub fn config(model: &Model) -> Option<&ConfigFile> {
    model.configs.iter().find(|c| {
        c.component.is_empty()
            && c.path.file_name().is_some_and(|n| n == "config.json")
            && (c.json.get("model_type").and_then(|v| v.as_str()) == Some("bert")
                || c.json
                    .get("architectures")
                    .and_then(|v| v.as_array())
                    .is_some_and(|a| {
                        a.iter()
                            .any(|v| matches!(v.as_str(), Some("BertModel" | "BertForMaskedLM")))
                    }))
    })
}

/// The file's keys and names, or an error naming what is missing or unknown.
pub fn layout(model: &Model, config: &ConfigFile, name: &str) -> Result<ArchLayout> {
    let dir = config.path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let hp = Hyper::read(config)?;
    let mut read = Vec::new();
    let (pooling, pooling_from) = pooling_type(&dir, &mut read)?;
    let vocab = Vocab::read(&dir, hp.vocab_size, &mut read)?;
    let (names, dropped) = tensor_names(model, hp.blocks)?;

    let mut m = vec![
        string("general.architecture", ARCH),
        string("general.name", name),
    ];
    let key = |k: &str| format!("{ARCH}.{k}");
    m.push(u32_key(&key("context_length"), hp.context));
    m.push(u32_key(&key("embedding_length"), hp.embedding));
    m.push(u32_key(&key("feed_forward_length"), hp.feed_forward));
    m.push(u32_key(&key("block_count"), hp.blocks));
    m.push(u32_key(&key("attention.head_count"), hp.heads));
    m.push((
        key("attention.layer_norm_epsilon"),
        MetaValue::F32(hp.layer_norm_eps),
    ));
    m.push(bool_key(&key("attention.causal"), false));
    if let Some(p) = pooling {
        m.push(u32_key(&key("pooling_type"), p));
    }
    m.push(string("tokenizer.ggml.model", "bert"));
    // llama.cpp ignores the pre-tokenizer's name for WPM vocabularies.
    m.push(string("tokenizer.ggml.pre", "default"));
    m.push((
        "tokenizer.ggml.tokens".into(),
        MetaValue::Array(
            ValueType::String,
            vocab.tokens.into_iter().map(MetaValue::String).collect(),
        ),
    ));
    m.push((
        "tokenizer.ggml.token_type".into(),
        MetaValue::Array(
            ValueType::I32,
            vocab.types.into_iter().map(MetaValue::I32).collect(),
        ),
    ));
    m.push(u32_key("tokenizer.ggml.token_type_count", hp.token_types));
    for (token, k) in SPECIAL {
        m.push(u32_key(k, vocab.special[*token]));
    }
    // llama.cpp adds [CLS] ... [SEP] itself, the BOS id being [CLS].
    m.push(bool_key("tokenizer.ggml.add_bos_token", true));
    m.push(bool_key("tokenizer.ggml.add_sep_token", true));

    let pooling_text = match pooling {
        Some(POOLING_MEAN) => "mean",
        Some(POOLING_CLS) => "cls",
        Some(POOLING_LAST) => "last",
        _ => "none",
    };
    Ok(ArchLayout {
        architecture: ARCH.into(),
        metadata: m,
        names,
        dropped,
        read,
        reordered: Default::default(),
        note: format!(
            "GGUF for llama.cpp: architecture bert, {} blocks, {} tokens, {pooling_text} \
             pooling ({pooling_from})",
            hp.blocks, hp.vocab_size
        ),
    })
}

/// The hyperparameters llama.cpp's BERT loader reads.
struct Hyper {
    context: u32,
    embedding: u32,
    feed_forward: u32,
    blocks: u32,
    heads: u32,
    layer_norm_eps: f32,
    vocab_size: u32,
    token_types: u32,
}

impl Hyper {
    fn read(config: &ConfigFile) -> Result<Hyper> {
        let path = config.path.display();
        let json = &config.json;
        let int = |key: &str, gguf: &str| -> Result<u32> {
            let v = json.get(key).ok_or_else(|| {
                plan_error(format!(
                    "{path}: BERT without '{key}', which llama.cpp needs as {ARCH}.{gguf}"
                ))
            })?;
            v.as_u64()
                .filter(|&n| n > 0)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    plan_error(format!("{path}: '{key}' is {v}, not a positive integer"))
                })
        };
        let text = |key: &str, default: &str| -> String {
            json.get(key)
                .and_then(|v| v.as_str())
                .unwrap_or(default)
                .to_string()
        };
        // llama.cpp's BERT graph: learned absolute positions and a GELU feed-forward.
        let position = text("position_embedding_type", "absolute");
        if position != "absolute" {
            return Err(plan_error(format!(
                "{path}: position_embedding_type '{position}': llama.cpp's BERT has absolute \
                 position embeddings only"
            )));
        }
        let act = text("hidden_act", "gelu");
        if act != "gelu" {
            return Err(plan_error(format!(
                "{path}: hidden_act '{act}': llama.cpp's BERT feed-forward is GELU"
            )));
        }
        let eps = json.get("layer_norm_eps").ok_or_else(|| {
            plan_error(format!(
                "{path}: BERT without 'layer_norm_eps', which llama.cpp needs as \
                 {ARCH}.attention.layer_norm_epsilon"
            ))
        })?;
        let layer_norm_eps = eps
            .as_f64()
            .filter(|e| e.is_finite() && *e > 0.0)
            .ok_or_else(|| plan_error(format!("{path}: 'layer_norm_eps' is {eps}")))?
            as f32;
        let hp = Hyper {
            context: int("max_position_embeddings", "context_length")?,
            embedding: int("hidden_size", "embedding_length")?,
            feed_forward: int("intermediate_size", "feed_forward_length")?,
            blocks: int("num_hidden_layers", "block_count")?,
            heads: int("num_attention_heads", "attention.head_count")?,
            layer_norm_eps,
            vocab_size: int("vocab_size", "the length of tokenizer.ggml.tokens")?,
            // transformers' BertConfig default.
            token_types: match json.get("type_vocab_size") {
                None => 2,
                Some(_) => int("type_vocab_size", "token_type_count")?,
            },
        };
        if !hp.embedding.is_multiple_of(hp.heads) {
            return Err(plan_error(format!(
                "{path}: hidden_size {} is not a multiple of num_attention_heads {}",
                hp.embedding, hp.heads
            )));
        }
        Ok(hp)
    }
}

/// llama.cpp's pooling type from sentence-transformers' Pooling module, and where it came
/// from. A sentence-transformers folder without one pools by mean (its Pooling default);
/// a plain BERT folder gets no key (llama.cpp then returns every token's embedding).
fn pooling_type(dir: &Path, read: &mut Vec<PathBuf>) -> Result<(Option<u32>, String)> {
    let modules = dir.join("modules.json");
    let mut pooling_dir = None;
    if modules.is_file() {
        read.push(modules.clone());
        let json = read_json(&modules)?;
        pooling_dir = json.as_array().and_then(|items| {
            items.iter().find_map(|m| {
                let ty = m.get("type")?.as_str()?;
                ty.ends_with(".Pooling")
                    .then(|| m.get("path")?.as_str().map(str::to_string))?
            })
        });
    }
    let cfg = dir
        .join(pooling_dir.as_deref().unwrap_or("1_Pooling"))
        .join("config.json");
    if cfg.is_file() {
        read.push(cfg.clone());
        let p = read_json(&cfg)?;
        let on = |k: &str| p.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let ty = if on("pooling_mode_cls_token") {
            POOLING_CLS
        } else if on("pooling_mode_mean_tokens") {
            POOLING_MEAN
        } else if on("pooling_mode_lasttoken") {
            POOLING_LAST
        } else {
            return Err(plan_error(format!(
                "{}: a pooling llama.cpp does not have (it pools by cls, mean or last token)",
                cfg.display()
            )));
        };
        return Ok((Some(ty), cfg.display().to_string()));
    }
    let sentence_transformers = modules.is_file()
        || dir.join("config_sentence_transformers.json").is_file()
        || dir.join("sentence_bert_config.json").is_file();
    if sentence_transformers {
        Ok((
            Some(POOLING_MEAN),
            "a sentence-transformers folder without a pooling configuration".into(),
        ))
    } else {
        Ok((None, "not a sentence-transformers folder".into()))
    }
}

/// The WordPiece vocabulary as llama.cpp's WPM tokenizer takes it.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    special: HashMap<&'static str, u32>,
}

impl Vocab {
    /// `vocab.txt` in id order: special tokens typed CONTROL and kept as they are, every other
    /// token in llama.cpp's "phantom space" form (`##ing` -> `ing`, `word` -> `▁word`). The
    /// special ids from `tokenizer.json`'s special added tokens, else found in the vocabulary.
    fn read(dir: &Path, vocab_size: u32, read: &mut Vec<PathBuf>) -> Result<Vocab> {
        let path = dir.join("vocab.txt");
        if !path.is_file() {
            return Err(plan_error(format!(
                "{}: missing; llama.cpp's BERT tokenizer (WordPiece) takes its tokens from it",
                path.display()
            )));
        }
        read.push(path.clone());
        let text = read_file(&path)?;
        let mut lines: Vec<&str> = text.split('\n').collect();
        if lines.last() == Some(&"") {
            lines.pop();
        }
        let lines: Vec<&str> = lines
            .into_iter()
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        if lines.len() != vocab_size as usize {
            return Err(plan_error(format!(
                "{}: {} tokens, but config.json's vocab_size is {vocab_size}",
                path.display(),
                lines.len()
            )));
        }
        let mut marked: HashMap<String, u32> = HashMap::new();
        let tok_json = dir.join("tokenizer.json");
        if tok_json.is_file() {
            read.push(tok_json.clone());
            let json = read_json(&tok_json)?;
            for a in json
                .get("added_tokens")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                let special = a.get("special").and_then(|v| v.as_bool()) == Some(true);
                if let (true, Some(content), Some(id)) = (
                    special,
                    a.get("content").and_then(|v| v.as_str()),
                    a.get("id").and_then(|v| v.as_u64()),
                ) {
                    marked.insert(content.to_string(), id as u32);
                }
            }
        }
        let mut special = HashMap::new();
        for (token, _) in SPECIAL {
            let id = match marked.get(*token) {
                Some(&id) => id,
                None => {
                    let id = lines.iter().position(|l| l == token).ok_or_else(|| {
                        plan_error(format!(
                            "{}: no {token} token, which llama.cpp's BERT tokenizer needs",
                            path.display()
                        ))
                    })? as u32;
                    marked.insert(token.to_string(), id);
                    id
                }
            };
            special.insert(*token, id);
        }
        let mut tokens = Vec::with_capacity(lines.len());
        let mut types = Vec::with_capacity(lines.len());
        for (i, tok) in lines.iter().enumerate() {
            if marked.get(*tok) == Some(&(i as u32)) {
                tokens.push(tok.to_string());
                types.push(TOKEN_CONTROL);
            } else if let Some(rest) = tok.strip_prefix("##") {
                tokens.push(rest.to_string());
                types.push(TOKEN_NORMAL);
            } else {
                tokens.push(format!("\u{2581}{tok}"));
                types.push(TOKEN_NORMAL);
            }
        }
        Ok(Vocab {
            tokens,
            types,
            special,
        })
    }
}

/// What becomes of one checkpoint name.
enum Mapped {
    Name(String),
    Dropped(&'static str),
}

/// llama.cpp's name of a checkpoint tensor, `None` when the table does not know it.
fn map_name(checkpoint: &str, blocks: u32) -> Option<Mapped> {
    let name = checkpoint.strip_prefix(MODEL_PREFIX).unwrap_or(checkpoint);
    if let Some((_, why)) = DROPPED_NAMES.iter().find(|(n, _)| *n == name) {
        return Some(Mapped::Dropped(why));
    }
    if let Some((_, why)) = DROPPED_PREFIXES.iter().find(|(p, _)| name.starts_with(p)) {
        return Some(Mapped::Dropped(why));
    }
    let suffix = SUFFIXES.iter().find(|s| name.ends_with(*s))?;
    let stem = &name[..name.len() - suffix.len()];
    if let Some((_, to)) = EMBEDDINGS.iter().find(|(from, _)| *from == stem) {
        return Some(Mapped::Name(format!("{to}{suffix}")));
    }
    let rest = stem.strip_prefix(LAYER_PREFIX)?;
    let (n, rest) = rest.split_once('.')?;
    let n: u32 = n.parse().ok().filter(|&n| n < blocks)?;
    let (_, to) = LAYER.iter().find(|(from, _)| *from == rest)?;
    Some(Mapped::Name(format!("blk.{n}.{to}{suffix}")))
}

/// Every tensor's name in the file (or `None`, left out), the ones left out with why; an
/// error naming the tensors the table does not know, and the ones llama.cpp needs that are
/// missing.
#[allow(clippy::type_complexity)]
fn tensor_names(
    model: &Model,
    blocks: u32,
) -> Result<(Vec<Option<String>>, Vec<(String, String)>)> {
    let mut names = Vec::with_capacity(model.tensors.len());
    let mut dropped = Vec::new();
    let mut unknown = Vec::new();
    let mut seen: HashMap<String, &str> = HashMap::new();
    for t in &model.tensors {
        match map_name(&t.layer, blocks) {
            Some(Mapped::Name(n)) => {
                if let Some(first) = seen.insert(n.clone(), &t.layer) {
                    return Err(plan_error(format!(
                        "BERT checkpoint: '{first}' and '{}' are both llama.cpp's '{n}'",
                        t.layer
                    )));
                }
                names.push(Some(n));
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
            "BERT checkpoint: no llama.cpp name for {} tensor(s): {} (llama.cpp refuses a \
             file with tensors its BERT graph does not use)",
            unknown.len(),
            unknown.join(", ")
        )));
    }
    let have: HashSet<&str> = seen.keys().map(String::as_str).collect();
    let mut missing = Vec::new();
    let mut want = |n: String| {
        if !have.contains(n.as_str()) {
            missing.push(n);
        }
    };
    // The embedding tables have no bias; their norm has both.
    for (_, to) in EMBEDDINGS {
        let suffixes = if *to == "token_embd_norm" {
            SUFFIXES
        } else {
            &SUFFIXES[..1]
        };
        for s in suffixes {
            want(format!("{to}{s}"));
        }
    }
    for n in 0..blocks {
        for (_, to) in LAYER {
            for s in SUFFIXES {
                want(format!("blk.{n}.{to}{s}"));
            }
        }
    }
    if !missing.is_empty() {
        return Err(plan_error(format!(
            "BERT checkpoint: missing {} tensor(s) llama.cpp's BERT loader needs: {}",
            missing.len(),
            missing.join(", ")
        )));
    }
    Ok((names, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(name: &str) -> Option<String> {
        match map_name(name, 2)? {
            Mapped::Name(n) => Some(n),
            Mapped::Dropped(_) => Some("-".into()),
        }
    }

    #[test]
    fn names_are_llama_cpps() {
        let cases = [
            ("embeddings.word_embeddings.weight", "token_embd.weight"),
            ("bert.embeddings.LayerNorm.bias", "token_embd_norm.bias"),
            (
                "encoder.layer.1.attention.output.LayerNorm.weight",
                "blk.1.attn_output_norm.weight",
            ),
            ("encoder.layer.0.output.dense.bias", "blk.0.ffn_down.bias"),
            (
                "encoder.layer.0.intermediate.dense.weight",
                "blk.0.ffn_up.weight",
            ),
            ("embeddings.position_ids", "-"),
            ("pooler.dense.weight", "-"),
        ];
        for (from, to) in cases {
            assert_eq!(mapped(from).as_deref(), Some(to), "{from}");
        }
        assert_eq!(mapped("encoder.layer.2.output.dense.weight"), None);
        assert_eq!(mapped("classifier.weight"), None);
        assert_eq!(mapped("embeddings.LayerNorm.gamma"), None);
    }
}
