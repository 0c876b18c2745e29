//! A byte-level BPE `tokenizer.json` (GPT-2's and Llama 3's kind, Hugging Face `tokenizers`)
//! as llama.cpp's `gpt2` tokenizer takes it, key for key what llama.cpp's `convert_hf_to_gguf.py`
//! (`_set_vocab_gpt2`) and gguf-py's `SpecialVocab` write: the tokens in id order with their
//! types, the merges, the pre-tokenizer's name, the special token ids and whether BOS / EOS are
//! added.
//!
//! Only what llama.cpp runs as Hugging Face does is taken: a `BPE` model without byte fallback,
//! subword prefix or word suffix, no normalizer, a `ByteLevel` decoder, and a pre-tokenizer
//! llama.cpp has by name ([`PRE_TOKENIZERS`]). The converter names the pre-tokenizer from a hash
//! of its output on a fixed text; here it is named from the pre-tokenizer's own definition.
//! Anything else is refused, naming the file and what it has.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use datafusion::common::Result;
use serde_json::Value;

use super::{bool_key, plan_error, read_json, string, u32_key};
use crate::model::gguf_file::ValueType;
use crate::model::gguf_write::MetaValue;

/// gguf-py's `TokenType`.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// The regular expression of GPT-2's `ByteLevel` pre-tokenizer (`use_regex`), which llama.cpp's
/// `gpt-2` pre-tokenizer applies.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The `Split` pattern of Llama 3's tokenizer, which llama.cpp's `llama-bpe` applies.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers taken: llama.cpp's name (`tokenizer.ggml.pre`) and how `tokenizer.json`
/// spells it.
pub const PRE_TOKENIZERS: &str = "gpt-2 (a ByteLevel pre-tokenizer with use_regex) and \
     llama-bpe (Llama 3's Split pattern, Isolated, then ByteLevel without use_regex)";

/// gguf-py's special token kinds: the name in `tokenizer_config.json` (`{kind}_token`) and
/// `config.json` (`{kind}_token_id`), and the GGUF key.
const SPECIAL: &[(&str, &str)] = &[
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
];

/// GPT-2's printable stand-in for the newline byte, which llama.cpp's loader tokenizes to find
/// its line feed token (and aborts without).
const NEWLINE: &str = "\u{10a}";

/// The vocabulary llama.cpp's BPE tokenizer loads.
#[derive(Debug)]
pub struct BpeVocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
    pre: &'static str,
    /// GGUF key and token id.
    special: Vec<(&'static str, u32)>,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
    chat_template: Option<String>,
}

impl BpeVocab {
    /// `tokenizer.json` of `dir` for a model of `vocab_size` tokens (ids the tokenizer does not
    /// use become `[PADn]`, as the converter fills them), with the special tokens of
    /// `tokenizer_config.json` (if there is one) and else of `config` (`config.json`).
    pub fn read(
        dir: &Path,
        vocab_size: u32,
        config: &Value,
        read: &mut Vec<PathBuf>,
    ) -> Result<BpeVocab> {
        let path = dir.join("tokenizer.json");
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(plan_error(format!(
                "{shown}: missing; llama.cpp's byte-level BPE tokenizer takes its tokens and \
                 merges from it (a SentencePiece tokenizer.model alone is not supported)"
            )));
        }
        read.push(path.clone());
        let json = read_json(&path)?;
        let unsupported = |what: String| {
            plan_error(format!(
                "{shown}: {what}: not supported (ArrowQuant writes byte-level BPE tokenizers only)"
            ))
        };
        let model = json
            .get("model")
            .filter(|m| m.is_object())
            .ok_or_else(|| plan_error(format!("{shown}: no 'model' object")))?;
        let ty = model.get("type").and_then(Value::as_str).unwrap_or("");
        if ty != "BPE" {
            return Err(unsupported(format!("model.type '{ty}'")));
        }
        if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported(
                "model.byte_fallback (a SentencePiece-style BPE with <0xNN> byte tokens)".into(),
            ));
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let Some(s) = model
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                return Err(unsupported(format!("model.{key} '{s}'")));
            }
        }
        if let Some(n) = json.get("normalizer").filter(|n| !n.is_null()) {
            return Err(unsupported(format!(
                "normalizer {} (llama.cpp's BPE tokenizers do not normalize)",
                type_of(n)
            )));
        }
        let pre =
            pre_tokenizer(json.get("pre_tokenizer").unwrap_or(&Value::Null)).ok_or_else(|| {
                unsupported(format!(
                    "pre_tokenizer {} (taken: {PRE_TOKENIZERS})",
                    json.get("pre_tokenizer")
                        .map_or("null".to_string(), type_of)
                ))
            })?;
        let decoder = json.get("decoder").unwrap_or(&Value::Null);
        if decoder.get("type").and_then(Value::as_str) != Some("ByteLevel") {
            return Err(unsupported(format!(
                "decoder {} (a byte-level BPE decodes with ByteLevel)",
                type_of(decoder)
            )));
        }

        // Every id's token: the model's vocabulary, then the added tokens.
        let size = vocab_size as usize;
        let mut tokens: Vec<Option<String>> = vec![None; size];
        let mut types = vec![TOKEN_NORMAL; size];
        let mut put = |id: &Value, token: &str, ty: i32, tokens: &mut Vec<Option<String>>| {
            let id = id
                .as_u64()
                .ok_or_else(|| plan_error(format!("{shown}: token '{token}' has id {id}")))?;
            let slot = usize::try_from(id)
                .ok()
                .and_then(|i| tokens.get_mut(i))
                .ok_or_else(|| {
                    plan_error(format!(
                        "{shown}: token '{token}' has id {id}, but config.json's vocab_size is \
                         {vocab_size}"
                    ))
                })?;
            match slot {
                Some(other) if other != token => Err(plan_error(format!(
                    "{shown}: id {id} is both '{other}' and '{token}'"
                ))),
                _ => {
                    *slot = Some(token.to_string());
                    types[id as usize] = ty;
                    Ok(())
                }
            }
        };
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| plan_error(format!("{shown}: model.vocab is not an object")))?;
        for (token, id) in vocab {
            put(id, token, TOKEN_NORMAL, &mut tokens)?;
        }
        let added = json
            .get("added_tokens")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for a in added {
            let content = a.get("content").and_then(Value::as_str).ok_or_else(|| {
                plan_error(format!("{shown}: an added token without 'content': {a}"))
            })?;
            let special = a.get("special").and_then(Value::as_bool) == Some(true);
            let ty = if special {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            };
            put(
                a.get("id").unwrap_or(&Value::Null),
                content,
                ty,
                &mut tokens,
            )?;
        }
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.unwrap_or_else(|| {
                    types[i] = TOKEN_USER_DEFINED;
                    format!("[PAD{i}]")
                })
            })
            .collect();
        if !tokens.iter().any(|t| t == NEWLINE) {
            return Err(plan_error(format!(
                "{shown}: no token for the newline byte ('{NEWLINE}'), which llama.cpp's \
                 loader requires of a BPE vocabulary"
            )));
        }
        let merges = merges(model.get("merges"), &shown)?;

        // The special tokens: tokenizer_config.json's names, else config.json's ids.
        let ids: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let tok_config_path = dir.join("tokenizer_config.json");
        let tok_config = if tok_config_path.is_file() {
            read.push(tok_config_path.clone());
            read_json(&tok_config_path)?
        } else {
            Value::Null
        };
        let mut special = Vec::new();
        for (kind, key) in SPECIAL {
            let named = tok_config.get(format!("{kind}_token")).and_then(|v| {
                v.as_str()
                    .or_else(|| v.get("content").and_then(Value::as_str))
            });
            let id = match named {
                Some(token) => Some(*ids.get(token).ok_or_else(|| {
                    plan_error(format!(
                        "{}: {kind}_token '{token}' is not a token of {shown}",
                        tok_config_path.display()
                    ))
                })?),
                // gguf-py takes a single id only (a list of EOS ids is left out).
                None => config
                    .get(format!("{kind}_token_id"))
                    .and_then(Value::as_u64)
                    .filter(|&id| id < vocab_size as u64)
                    .map(|id| id as u32),
            };
            if let Some(id) = id {
                special.push((*key, id));
            }
        }
        let (mut add_bos, mut add_eos) = post_processor_adds(json.get("post_processor"));
        if let Some(b) = tok_config.get("add_bos_token").and_then(Value::as_bool) {
            add_bos = Some(b);
        }
        if let Some(b) = tok_config.get("add_eos_token").and_then(Value::as_bool) {
            add_eos = Some(b);
        }
        let chat_template = tok_config
            .get("chat_template")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(BpeVocab {
            tokens,
            types,
            merges,
            pre,
            special,
            add_bos,
            add_eos,
            chat_template,
        })
    }

    /// `tokenizer.ggml.pre`.
    pub fn pre(&self) -> &'static str {
        self.pre
    }

    /// The `tokenizer.*` keys.
    pub fn metadata(self) -> Vec<(String, MetaValue)> {
        let strings = |items: Vec<String>| {
            MetaValue::Array(
                ValueType::String,
                items.into_iter().map(MetaValue::String).collect(),
            )
        };
        let mut m = vec![
            string("tokenizer.ggml.model", "gpt2"),
            string("tokenizer.ggml.pre", self.pre),
            ("tokenizer.ggml.tokens".into(), strings(self.tokens)),
            (
                "tokenizer.ggml.token_type".into(),
                MetaValue::Array(
                    ValueType::I32,
                    self.types.into_iter().map(MetaValue::I32).collect(),
                ),
            ),
            ("tokenizer.ggml.merges".into(), strings(self.merges)),
        ];
        for (key, id) in self.special {
            m.push(u32_key(key, id));
        }
        if let Some(b) = self.add_bos {
            m.push(bool_key("tokenizer.ggml.add_bos_token", b));
        }
        if let Some(b) = self.add_eos {
            m.push(bool_key("tokenizer.ggml.add_eos_token", b));
        }
        if let Some(t) = self.chat_template {
            m.push(("tokenizer.chat_template".into(), MetaValue::String(t)));
        }
        m
    }
}

/// A JSON value's `type` for messages, or the value itself when it has none.
fn type_of(v: &Value) -> String {
    match v.get("type").and_then(Value::as_str) {
        Some(t) => format!("'{t}'"),
        None => v.to_string(),
    }
}

/// llama.cpp's name for a `tokenizer.json` pre-tokenizer, `None` when it has none.
fn pre_tokenizer(pre: &Value) -> Option<&'static str> {
    fn ty(v: &Value) -> &str {
        v.get("type").and_then(Value::as_str).unwrap_or("")
    }
    let flag = |v: &Value, key: &str, default: bool| {
        v.get(key).and_then(Value::as_bool).unwrap_or(default)
    };
    let byte_level = |v: &Value, regex: bool| {
        ty(v) == "ByteLevel"
            && !flag(v, "add_prefix_space", true)
            && flag(v, "use_regex", true) == regex
    };
    if byte_level(pre, true) {
        return Some("gpt-2");
    }
    if ty(pre) == "Sequence" {
        let items = pre.get("pretokenizers").and_then(Value::as_array)?;
        if let [split, level] = items.as_slice() {
            let pattern = split
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Value::as_str);
            let isolated = split.get("behavior").and_then(Value::as_str) == Some("Isolated");
            if ty(split) == "Split"
                && isolated
                && !flag(split, "invert", false)
                && byte_level(level, false)
            {
                match pattern {
                    Some(LLAMA3_SPLIT) => return Some("llama-bpe"),
                    Some(GPT2_SPLIT) => return Some("gpt-2"),
                    _ => {}
                }
            }
        }
    }
    None
}

/// The merges as llama.cpp takes them, `"left right"`: `tokenizer.json` has them so or, in
/// newer files, as pairs.
fn merges(merges: Option<&Value>, shown: &str) -> Result<Vec<String>> {
    let items = merges
        .and_then(Value::as_array)
        .ok_or_else(|| plan_error(format!("{shown}: model.merges is not a list")))?;
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let bad = || plan_error(format!("{shown}: merge {i} ({m}) is not a pair of tokens"));
            match m {
                Value::String(s) if s.split(' ').count() == 2 => Ok(s.clone()),
                Value::Array(pair) => match pair.as_slice() {
                    [Value::String(a), Value::String(b)]
                        if !a.is_empty()
                            && !b.is_empty()
                            && !a.contains(' ')
                            && !b.contains(' ') =>
                    {
                        Ok(format!("{a} {b}"))
                    }
                    _ => Err(bad()),
                },
                _ => Err(bad()),
            }
        })
        .collect()
}

/// Whether the post-processor adds a token before and after a single sequence (a
/// `TemplateProcessing`, alone or in a `Sequence`); `None` when it says nothing.
fn post_processor_adds(post: Option<&Value>) -> (Option<bool>, Option<bool>) {
    let Some(post) = post.filter(|p| !p.is_null()) else {
        return (Some(false), Some(false));
    };
    let template = match post.get("type").and_then(Value::as_str) {
        Some("TemplateProcessing") => Some(post),
        Some("Sequence") => post
            .get("processors")
            .and_then(Value::as_array)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("type").and_then(Value::as_str) == Some("TemplateProcessing"))
            }),
        Some("ByteLevel") => return (Some(false), Some(false)),
        _ => None,
    };
    let Some(single) = template
        .and_then(|t| t.get("single"))
        .and_then(Value::as_array)
    else {
        return (None, None);
    };
    let special = |v: Option<&Value>| v.map(|v| v.get("SpecialToken").is_some());
    (special(single.first()), special(single.last()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pre_tokenizers_are_named_as_llama_cpp_names_them() {
        let gpt2 = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true});
        assert_eq!(pre_tokenizer(&gpt2), Some("gpt-2"));
        let llama3 = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated",
             "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": false}]});
        assert_eq!(pre_tokenizer(&llama3), Some("llama-bpe"));
        // A prefix space, another pattern, Metaspace: none of llama.cpp's.
        let prefixed = json!({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true});
        assert_eq!(pre_tokenizer(&prefixed), None);
        let mut other = llama3.clone();
        other["pretokenizers"][0]["pattern"]["Regex"] = json!(r"\p{N}");
        assert_eq!(pre_tokenizer(&other), None);
        assert_eq!(pre_tokenizer(&json!({"type": "Metaspace"})), None);
        assert_eq!(pre_tokenizer(&Value::Null), None);
    }

    #[test]
    fn merges_are_written_as_two_tokens_with_a_space() {
        let m = merges(Some(&json!(["a b", ["c", "d"]])), "t").unwrap();
        assert_eq!(m, ["a b", "c d"]);
        assert!(merges(Some(&json!(["abc"])), "t").is_err());
        assert!(merges(Some(&json!([["a b", "c"]])), "t").is_err());
        assert!(merges(None, "t").is_err());
    }

    #[test]
    fn the_post_processor_says_whether_bos_and_eos_are_added() {
        let template = json!({"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}}]});
        assert_eq!(
            post_processor_adds(Some(&template)),
            (Some(true), Some(false))
        );
        let seq = json!({"type": "Sequence", "processors": [{"type": "ByteLevel"}, template]});
        assert_eq!(post_processor_adds(Some(&seq)), (Some(true), Some(false)));
        assert_eq!(post_processor_adds(None), (Some(false), Some(false)));
        let odd = json!({"type": "RobertaProcessing"});
        assert_eq!(post_processor_adds(Some(&odd)), (None, None));
    }
}
