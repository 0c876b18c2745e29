//! `arrowquant quantize FOLDER --format gguf` on a Hugging Face Llama folder made here (one or
//! two layers, hidden 256, grouped-query attention, a byte-level BPE tokenizer.json): llama.cpp's
//! `llama` architecture keys from config.json, the tokenizer's keys, llama.cpp's tensor names,
//! shapes and types, the query and key rows in llama.cpp's rotary order, a tied output head
//! left out; the refusals name the file and what it lacks or has that is not supported.
//! benches/llama_cpp/check_llama.py runs such files in llama.cpp itself.

mod common;

use std::path::{Path, PathBuf};

use arrowquant::model::gguf_file::{GgufFile, Value};
use common::meta_value as value;
use common::*;
use serde_json::{Value as Json, json};

const HIDDEN: usize = 256;
const FF: usize = 512;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
/// 256 byte tokens, 2 merges, 2 special tokens, one id unused.
const VOCAB: usize = 261;
const BOS: usize = 258;
const EOS: usize = 259;

fn config(layers: usize) -> Json {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "intermediate_size": FF,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 500000.0,
        "rope_scaling": null,
        "vocab_size": VOCAB,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
    })
}

/// GPT-2's printable stand-in for each byte.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

fn tokenizer() -> Json {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_char(b).to_string(), json!(b));
    }
    vocab.insert("th".into(), json!(256));
    vocab.insert("the".into(), json!(257));
    let added = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "added_tokens": [added(BOS, "<|begin_of_text|>"), added(EOS, "<|end_of_text|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
             "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": false}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
             "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [], "special_tokens": {}}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab, "merges": [["t", "h"], ["th", "e"]]},
    })
}

/// The checkpoint's tensors in LlamaForCausalLM's names, the output head unless `tied`.
fn tensors(layers: usize, tied: bool) -> Vec<Tensor> {
    let mut seed = 0;
    let mut f32 = |name: &str, shape: &[usize]| {
        seed += 1;
        Tensor::f32(name, shape, &values(shape.iter().product(), seed))
    };
    let mut out = vec![f32("model.embed_tokens.weight", &[VOCAB, HIDDEN])];
    for n in 0..layers {
        let p = format!("model.layers.{n}.");
        out.push(f32(&format!("{p}input_layernorm.weight"), &[HIDDEN]));
        out.push(f32(
            &format!("{p}self_attn.q_proj.weight"),
            &[HEADS * HEAD_DIM, HIDDEN],
        ));
        out.push(f32(
            &format!("{p}self_attn.k_proj.weight"),
            &[KV_HEADS * HEAD_DIM, HIDDEN],
        ));
        out.push(f32(
            &format!("{p}self_attn.v_proj.weight"),
            &[KV_HEADS * HEAD_DIM, HIDDEN],
        ));
        out.push(f32(
            &format!("{p}self_attn.o_proj.weight"),
            &[HIDDEN, HEADS * HEAD_DIM],
        ));
        out.push(f32(
            &format!("{p}post_attention_layernorm.weight"),
            &[HIDDEN],
        ));
        out.push(f32(&format!("{p}mlp.gate_proj.weight"), &[FF, HIDDEN]));
        out.push(f32(&format!("{p}mlp.up_proj.weight"), &[FF, HIDDEN]));
        out.push(f32(&format!("{p}mlp.down_proj.weight"), &[HIDDEN, FF]));
    }
    out.push(f32("model.norm.weight", &[HIDDEN]));
    if !tied {
        out.push(f32("lm_head.weight", &[VOCAB, HIDDEN]));
    }
    out
}

fn write_json(path: &Path, v: &Json) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// A Llama folder: config.json, model.safetensors, tokenizer.json, tokenizer_config.json.
fn folder(name: &str, layers: usize, tied: bool) -> PathBuf {
    let dir = scratch(name).join("model");
    std::fs::create_dir_all(&dir).unwrap();
    write_json(&dir.join("config.json"), &config(layers));
    write_json(&dir.join("tokenizer.json"), &tokenizer());
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                "chat_template": "{{ messages }}"}),
    );
    write_safetensors(&dir.join("model.safetensors"), &tensors(layers, tied));
    dir
}

fn quantize(model: &Path, extra: &[&str]) -> (std::process::Output, PathBuf) {
    let out = model.parent().unwrap().join("out.gguf");
    let mut args = vec![
        "quantize",
        "-q",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "gguf",
        "--force",
    ];
    args.extend_from_slice(extra);
    (arrowquant(&args, model.parent().unwrap()), out)
}

fn ok(model: &Path, extra: &[&str]) -> (String, GgufFile) {
    let (o, out) = quantize(model, extra);
    assert!(o.status.success(), "{}", stderr(&o));
    (stdout(&o), GgufFile::open(&out).unwrap())
}

fn uint(file: &GgufFile, key: &str) -> u64 {
    match value(file, key) {
        Some(Value::UInt(v)) => v,
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn a_llama_folder_has_llama_cpps_keys_names_shapes_and_types() {
    let model = folder("gguf-llama-keys", 2, false);
    let (summary, file) = ok(&model, &["--scheme", "q4_K", "--pure"]);
    assert!(summary.contains("architecture llama"), "{summary}");
    let text = |k: &str| meta_text(&file, k);
    assert_eq!(text("general.architecture"), "llama");
    assert_eq!(text("general.name"), "model");
    for (key, want) in [
        ("llama.vocab_size", VOCAB),
        ("llama.context_length", 512),
        ("llama.embedding_length", HIDDEN),
        ("llama.block_count", 2),
        ("llama.feed_forward_length", FF),
        ("llama.attention.head_count", HEADS),
        ("llama.attention.head_count_kv", KV_HEADS),
        ("llama.rope.dimension_count", HEAD_DIM),
        ("tokenizer.ggml.bos_token_id", BOS),
        ("tokenizer.ggml.eos_token_id", EOS),
    ] {
        assert_eq!(uint(&file, key), want as u64, "{key}");
    }
    assert_eq!(
        value(&file, "llama.attention.layer_norm_rms_epsilon"),
        Some(Value::Float32(1e-6))
    );
    assert_eq!(
        value(&file, "llama.rope.freq_base"),
        Some(Value::Float32(500000.0))
    );
    // head_dim is hidden / heads: no key_length.
    assert_eq!(value(&file, "llama.attention.key_length"), None);

    // The tokenizer: byte-level BPE, Llama 3's pre-tokenizer, ids in order, the unused id as
    // the converter fills it, the special tokens CONTROL, the merges as "a b".
    assert_eq!(text("tokenizer.ggml.model"), "gpt2");
    assert_eq!(text("tokenizer.ggml.pre"), "llama-bpe");
    let tokens: Vec<String> = serde_json::from_str(&text("tokenizer.ggml.tokens")).unwrap();
    assert_eq!(tokens.len(), VOCAB);
    assert_eq!(tokens[0], "\u{100}");
    assert_eq!(tokens[10], "\u{10a}", "the newline byte");
    assert_eq!(tokens[b'a' as usize], "a");
    assert_eq!(tokens[257], "the");
    assert_eq!(tokens[BOS], "<|begin_of_text|>");
    assert_eq!(tokens[260], "[PAD260]");
    let types: Vec<i32> = serde_json::from_str(&text("tokenizer.ggml.token_type")).unwrap();
    assert_eq!((types[0], types[257], types[BOS], types[EOS]), (1, 1, 3, 3));
    assert_eq!(types[260], 4, "an unused id is USER_DEFINED");
    assert_eq!(text("tokenizer.ggml.merges"), r#"["t h","th e"]"#);
    // The post-processor's template adds BOS; tokenizer_config.json says nothing of EOS.
    assert_eq!(
        value(&file, "tokenizer.ggml.add_bos_token"),
        Some(Value::Bool(true))
    );
    assert_eq!(text("tokenizer.chat_template"), "{{ messages }}");

    // Names, ggml dims (innermost first) and types (in the checkpoint's order, which
    // llama.cpp does not mind).
    let mut got: Vec<(String, Vec<u64>, &str)> = file
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.dims.clone(), t.ggml_type.name))
        .collect();
    let (h, f, v, q, kv) = (HIDDEN as u64, FF as u64, VOCAB as u64, 256, 128);
    let mut want = vec![("token_embd.weight".to_string(), vec![h, v], "Q4_K")];
    for n in 0..2 {
        let b = |s: &str| format!("blk.{n}.{s}.weight");
        want.extend([
            (b("attn_norm"), vec![h], "F32"),
            (b("attn_q"), vec![h, q], "Q4_K"),
            (b("attn_k"), vec![h, kv], "Q4_K"),
            (b("attn_v"), vec![h, kv], "Q4_K"),
            (b("attn_output"), vec![q, h], "Q4_K"),
            (b("ffn_norm"), vec![h], "F32"),
            (b("ffn_gate"), vec![h, f], "Q4_K"),
            (b("ffn_up"), vec![h, f], "Q4_K"),
            (b("ffn_down"), vec![f, h], "Q4_K"),
        ]);
    }
    want.push(("output_norm.weight".into(), vec![h], "F32"));
    want.push(("output.weight".into(), vec![h, v], "Q4_K"));
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// File row `n` of a rotary tensor is checkpoint row `from(n)`: the converter's permutation
/// (rows as `[heads, 2, head_dim / 2]`, the last two axes swapped).
fn converter_row(n: usize) -> usize {
    let (head, rest) = (n / HEAD_DIM, n % HEAD_DIM);
    head * HEAD_DIM + (rest % 2) * (HEAD_DIM / 2) + rest / 2
}

#[test]
fn query_and_key_rows_are_in_llama_cpps_rotary_order() {
    // --min-cosine 1: every tensor kept as stored (F32), so each row is the checkpoint's bytes.
    let model = folder("gguf-llama-rows", 1, false);
    let (summary, file) = ok(&model, &["--scheme", "q8_0", "--min-cosine", "1"]);
    assert!(summary.contains("rotary order"), "{summary}");
    let checkpoint = tensors(1, false);
    let source = |name: &str| checkpoint.iter().find(|t| t.name == name).unwrap();
    let row_bytes = HIDDEN * 4;
    for (gguf, hf, permuted) in [
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj.weight",
            true,
        ),
        (
            "blk.0.attn_k.weight",
            "model.layers.0.self_attn.k_proj.weight",
            true,
        ),
        (
            "blk.0.attn_v.weight",
            "model.layers.0.self_attn.v_proj.weight",
            false,
        ),
        ("token_embd.weight", "model.embed_tokens.weight", false),
    ] {
        let t = file.tensors().iter().find(|t| t.name == gguf).unwrap();
        assert_eq!(t.ggml_type.name, "F32", "{gguf}");
        let data = file.bytes(t.start, t.len);
        let src = &source(hf).bytes;
        assert_eq!(data.len(), src.len(), "{gguf}");
        for n in 0..data.len() / row_bytes {
            let from = if permuted { converter_row(n) } else { n };
            assert_eq!(
                &data[n * row_bytes..(n + 1) * row_bytes],
                &src[from * row_bytes..(from + 1) * row_bytes],
                "{gguf} row {n}"
            );
        }
    }
    // Quantized, the same rows move: each q8_0 row of the file is the checkpoint row's blocks.
    let (_, q8) = ok(&model, &["--scheme", "q8_0", "--pure"]);
    let (_, plain) = {
        // The same checkpoint with the q rows already in llama.cpp's order, under a name no
        // architecture knows, quantized as it is.
        let dir = scratch("gguf-llama-rows-plain");
        let q = source("model.layers.0.self_attn.q_proj.weight");
        let mut bytes = Vec::with_capacity(q.bytes.len());
        for n in 0..HIDDEN {
            let from = converter_row(n);
            bytes.extend_from_slice(&q.bytes[from * row_bytes..(from + 1) * row_bytes]);
        }
        let path = dir.join("q.safetensors");
        write_safetensors(
            &path,
            &[Tensor::raw(
                "blk.0.attn_q.weight",
                q.dtype,
                &[HIDDEN, HIDDEN],
                bytes,
            )],
        );
        ok(&path, &["--scheme", "q8_0", "--pure"])
    };
    let data = |f: &GgufFile| {
        let t = f
            .tensors()
            .iter()
            .find(|t| t.name == "blk.0.attn_q.weight")
            .unwrap();
        f.bytes(t.start, t.len).to_vec()
    };
    assert_eq!(data(&q8), data(&plain));
}

#[test]
fn without_lm_head_the_output_is_tied_to_the_token_embeddings() {
    let model = folder("gguf-llama-tied", 1, true);
    let (summary, file) = ok(&model, &["--scheme", "q8_0", "--pure"]);
    assert!(summary.contains("output tied to token_embd"), "{summary}");
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"token_embd.weight"), "{names:?}");
    assert!(!names.contains(&"output.weight"), "{names:?}");
    assert_eq!(names.len(), 1 + 9 + 1);
}

#[test]
fn a_sharded_folder_is_read_as_one_model() {
    let model = folder("gguf-llama-sharded", 1, false);
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    let all = tensors(1, false);
    let (a, b) = all.split_at(5);
    let mut map = serde_json::Map::new();
    for (part, file) in [
        (a, "model-00001-of-00002.safetensors"),
        (b, "model-00002-of-00002.safetensors"),
    ] {
        write_safetensors(&model.join(file), part);
        for t in part {
            map.insert(t.name.clone(), json!(file));
        }
    }
    write_json(
        &model.join("model.safetensors.index.json"),
        &json!({"metadata": {}, "weight_map": map}),
    );
    let (_, file) = ok(&model, &["--scheme", "q8_0", "--pure"]);
    assert_eq!(file.tensors().len(), all.len());
    assert_eq!(meta_text(&file, "general.architecture"), "llama");
}

/// The folder with config.json or tokenizer.json changed by `edit`.
fn refused(name: &str, file: &str, edit: impl FnOnce(&mut Json), needle: &str) {
    let model = folder(name, 1, false);
    let path = model.join(file);
    let mut v: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    write_json(&path, &v);
    let (o, out) = quantize(&model, &["--scheme", "q8_0"]);
    assert_fails_with(&o, needle);
    assert!(stderr(&o).contains(file), "names {file}: {}", stderr(&o));
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn an_unsupported_tokenizer_is_refused_naming_the_file_and_what_it_has() {
    refused(
        "gguf-llama-unigram",
        "tokenizer.json",
        |t| t["model"]["type"] = json!("Unigram"),
        "model.type 'Unigram': not supported",
    );
    refused(
        "gguf-llama-metaspace",
        "tokenizer.json",
        |t| t["pre_tokenizer"] = json!({"type": "Metaspace", "replacement": "\u{2581}"}),
        "pre_tokenizer 'Metaspace'",
    );
    refused(
        "gguf-llama-byte-fallback",
        "tokenizer.json",
        |t| t["model"]["byte_fallback"] = json!(true),
        "model.byte_fallback",
    );
    refused(
        "gguf-llama-nfc",
        "tokenizer.json",
        |t| t["normalizer"] = json!({"type": "NFC"}),
        "normalizer 'NFC'",
    );
    refused(
        "gguf-llama-big-id",
        "tokenizer.json",
        |t| t["added_tokens"][1]["id"] = json!(VOCAB),
        "has id 261, but config.json's vocab_size is 261",
    );
    // A folder without tokenizer.json (a SentencePiece tokenizer.model, say).
    let model = folder("gguf-llama-no-tokenizer", 1, false);
    std::fs::remove_file(model.join("tokenizer.json")).unwrap();
    let (o, _) = quantize(&model, &["--scheme", "q8_0"]);
    assert_fails_with(&o, "tokenizer.json: missing");
}

#[test]
fn a_bad_config_is_refused_naming_the_key_and_the_file() {
    refused(
        "gguf-llama-no-eps",
        "config.json",
        |c| {
            c.as_object_mut().unwrap().remove("rms_norm_eps");
        },
        "Llama without 'rms_norm_eps', which llama.cpp needs as \
         llama.attention.layer_norm_rms_epsilon",
    );
    refused(
        "gguf-llama-no-heads",
        "config.json",
        |c| {
            c.as_object_mut().unwrap().remove("num_attention_heads");
        },
        "'num_attention_heads'",
    );
    refused(
        "gguf-llama-rope-scaling",
        "config.json",
        |c| {
            c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
        },
        "rope_scaling {\"factor\":8.0,\"rope_type\":\"llama3\"}: not supported",
    );
    refused(
        "gguf-llama-gelu",
        "config.json",
        |c| c["hidden_act"] = json!("gelu"),
        "hidden_act 'gelu'",
    );
    // config.json and the tensors disagree: the tensor is named.
    refused(
        "gguf-llama-kv-heads",
        "config.json",
        |c| c["num_key_value_heads"] = json!(4),
        "config.json's hyperparameters give llama.cpp's 'blk.0.attn_k.weight' [256, 256]",
    );
}

#[test]
fn a_missing_or_unknown_tensor_is_refused_by_name() {
    let model = folder("gguf-llama-missing", 1, false);
    let mut t = tensors(1, false);
    t.retain(|t| t.name != "model.layers.0.mlp.up_proj.weight");
    t.push(Tensor::f32(
        "model.layers.0.mlp.extra.weight",
        &[4],
        &[0.0; 4],
    ));
    write_safetensors(&model.join("model.safetensors"), &t);
    let (o, _) = quantize(&model, &["--scheme", "q8_0"]);
    assert_fails_with(
        &o,
        "no llama.cpp name for 1 tensor(s): model.layers.0.mlp.extra.weight",
    );
    t.pop();
    write_safetensors(&model.join("model.safetensors"), &t);
    let (o, _) = quantize(&model, &["--scheme", "q8_0"]);
    assert_fails_with(
        &o,
        "missing 1 tensor(s) llama.cpp's Llama loader needs: blk.0.ffn_up.weight",
    );
}
