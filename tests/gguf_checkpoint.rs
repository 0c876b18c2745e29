//! `arrowquant quantize FOLDER --format gguf` on a Hugging Face BERT folder made here (tiny
//! dims): the file has llama.cpp's `bert` architecture keys, the hyperparameters of
//! config.json, the pooling of 1_Pooling/config.json, the WordPiece vocabulary of vocab.txt
//! (as benches/llama_cpp/make_f32_gguf.py writes them) and llama.cpp's tensor names; the
//! refusals name what is missing or unknown. An unknown architecture keeps its checkpoint
//! names and says llama.cpp will not load the file.

mod common;

use std::path::{Path, PathBuf};

use arrowquant::model::gguf_file::{GgufFile, Value};
use common::*;
use safetensors::tensor::Dtype;

const HIDDEN: usize = 32;
const FF: usize = 64;
const LAYERS: usize = 2;
const POSITIONS: usize = 16;
const VOCAB: &[&str] = &[
    "[PAD]",
    "[unused0]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "cat",
    "##s",
    "sat",
    ".",
    "on",
];

fn config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_size": HIDDEN,
        "intermediate_size": FF,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": POSITIONS,
        "num_attention_heads": 4,
        "num_hidden_layers": LAYERS,
        "position_embedding_type": "absolute",
        "type_vocab_size": 2,
        "vocab_size": VOCAB.len(),
    })
}

/// The checkpoint's tensors, in BertModel's names, with the buffer and the pooler
/// sentence-transformers checkpoints carry.
fn tensors() -> Vec<Tensor> {
    let mut seed = 0;
    let mut f32 = |name: &str, shape: &[usize]| {
        seed += 1;
        Tensor::f32(name, shape, &values(shape.iter().product(), seed))
    };
    let mut out = vec![
        f32("embeddings.word_embeddings.weight", &[VOCAB.len(), HIDDEN]),
        f32(
            "embeddings.position_embeddings.weight",
            &[POSITIONS, HIDDEN],
        ),
        f32("embeddings.token_type_embeddings.weight", &[2, HIDDEN]),
        f32("embeddings.LayerNorm.weight", &[HIDDEN]),
        f32("embeddings.LayerNorm.bias", &[HIDDEN]),
        f32("pooler.dense.weight", &[HIDDEN, HIDDEN]),
        f32("pooler.dense.bias", &[HIDDEN]),
    ];
    out.push(Tensor::raw(
        "embeddings.position_ids",
        Dtype::I64,
        &[1, POSITIONS],
        (0..POSITIONS as i64)
            .flat_map(|i| i.to_le_bytes())
            .collect(),
    ));
    for n in 0..LAYERS {
        let l = |s: &str| format!("encoder.layer.{n}.{s}");
        for (stem, rows, cols) in [
            ("attention.self.query", HIDDEN, HIDDEN),
            ("attention.self.key", HIDDEN, HIDDEN),
            ("attention.self.value", HIDDEN, HIDDEN),
            ("attention.output.dense", HIDDEN, HIDDEN),
            ("intermediate.dense", FF, HIDDEN),
            ("output.dense", HIDDEN, FF),
        ] {
            out.push(f32(&l(&format!("{stem}.weight")), &[rows, cols]));
            out.push(f32(&l(&format!("{stem}.bias")), &[rows]));
        }
        for stem in ["attention.output.LayerNorm", "output.LayerNorm"] {
            out.push(f32(&l(&format!("{stem}.weight")), &[HIDDEN]));
            out.push(f32(&l(&format!("{stem}.bias")), &[HIDDEN]));
        }
    }
    out
}

/// A sentence-transformers BERT folder: config.json, model.safetensors, vocab.txt,
/// modules.json and 1_Pooling/config.json (CLS pooling, so not the default).
fn bert_folder(name: &str) -> PathBuf {
    let dir = scratch(name).join("tiny-bert");
    write_safetensors(&dir.join("model.safetensors"), &tensors());
    write_json(&dir.join("config.json"), &config());
    std::fs::write(dir.join("vocab.txt"), VOCAB.join("\n") + "\n").unwrap();
    write_json(
        &dir.join("modules.json"),
        &serde_json::json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
        ]),
    );
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    write_json(
        &dir.join("1_Pooling/config.json"),
        &serde_json::json!({
            "word_embedding_dimension": HIDDEN,
            "pooling_mode_cls_token": true,
            "pooling_mode_mean_tokens": false
        }),
    );
    dir
}

fn write_json(path: &Path, json: &serde_json::Value) {
    std::fs::write(path, serde_json::to_string_pretty(json).unwrap()).unwrap();
}

fn quantize(model: &Path, out: &Path) -> std::process::Output {
    let args = [
        "quantize",
        "-q",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "gguf",
        "--scheme",
        "q8_0",
        "--pure",
    ];
    arrowquant(&args, model.parent().unwrap())
}

fn ok(model: &Path, out: &Path) -> String {
    let o = quantize(model, out);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// The refusal's message; nothing may be written.
fn refused(model: &Path, out: &Path) -> String {
    let o = quantize(model, out);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(!out.exists(), "{} was written", out.display());
    stderr(&o)
}

fn value(file: &GgufFile, key: &str) -> Option<Value> {
    let entry = file.header().metadata.iter().find(|e| e.key == key)?;
    file.value(entry)
}

fn array(file: &GgufFile, key: &str) -> serde_json::Value {
    let entry = file.header().metadata.iter().find(|e| e.key == key);
    let entry = entry.unwrap_or_else(|| panic!("{key} missing"));
    serde_json::from_str(&file.json(entry)).unwrap()
}

#[test]
fn a_bert_folder_is_written_with_llama_cpps_keys_tokenizer_and_names() {
    let dir = bert_folder("gguf-ckpt-bert");
    let out = dir.parent().unwrap().join("bert.gguf");
    let summary = ok(&dir, &out);
    assert!(
        summary.contains("GGUF for llama.cpp: architecture bert, 2 blocks, 12 tokens, cls pooling"),
        "{summary}"
    );
    for dropped in [
        "embeddings.position_ids (an index buffer",
        "pooler.dense.weight (the pooler head",
        "pooler.dense.bias (the pooler head",
    ] {
        assert!(summary.contains(dropped), "{summary}");
    }
    let file = GgufFile::open(&out).unwrap();
    let keys: Vec<&str> = file
        .header()
        .metadata
        .iter()
        .map(|e| e.key.as_str())
        .collect();
    assert_eq!(keys[..2], ["general.architecture", "general.name"]);
    let s = |v: &str| Some(Value::String(v.into()));
    let u = |v: u64| Some(Value::UInt(v));
    let b = |v: bool| Some(Value::Bool(v));
    for (key, want) in [
        ("general.architecture", s("bert")),
        ("general.name", s("tiny-bert")),
        ("general.file_type", u(7)),
        ("bert.context_length", u(POSITIONS as u64)),
        ("bert.embedding_length", u(HIDDEN as u64)),
        ("bert.feed_forward_length", u(FF as u64)),
        ("bert.block_count", u(LAYERS as u64)),
        ("bert.attention.head_count", u(4)),
        (
            "bert.attention.layer_norm_epsilon",
            Some(Value::Float32(1e-12)),
        ),
        ("bert.attention.causal", b(false)),
        // LLAMA_POOLING_TYPE_CLS.
        ("bert.pooling_type", u(2)),
        ("tokenizer.ggml.model", s("bert")),
        ("tokenizer.ggml.pre", s("default")),
        ("tokenizer.ggml.token_type_count", u(2)),
        ("tokenizer.ggml.bos_token_id", u(3)),
        ("tokenizer.ggml.seperator_token_id", u(4)),
        ("tokenizer.ggml.unknown_token_id", u(2)),
        ("tokenizer.ggml.padding_token_id", u(0)),
        ("tokenizer.ggml.mask_token_id", u(5)),
        ("tokenizer.ggml.add_bos_token", b(true)),
        ("tokenizer.ggml.add_sep_token", b(true)),
    ] {
        assert_eq!(value(&file, key), want, "{key}");
    }
    // Every token in id order: specials as they are (CONTROL, 3), "##s" as "s", the others
    // after llama.cpp's phantom space (NORMAL, 1).
    assert_eq!(
        array(&file, "tokenizer.ggml.tokens"),
        serde_json::json!([
            "[PAD]",
            "\u{2581}[unused0]",
            "[UNK]",
            "[CLS]",
            "[SEP]",
            "[MASK]",
            "\u{2581}the",
            "\u{2581}cat",
            "s",
            "\u{2581}sat",
            "\u{2581}.",
            "\u{2581}on"
        ])
    );
    assert_eq!(
        array(&file, "tokenizer.ggml.token_type"),
        serde_json::json!([3, 1, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1])
    );
    // The tensors (in the checkpoint file's order, which is by name) under llama.cpp's names, with their types: the
    // weights llama.cpp quantizes in Q8_0, position and token-type tables and 1-D tensors F32;
    // the buffer and the pooler left out. Dimensions are ggml's (innermost first).
    let got: Vec<(String, &str, Vec<u64>)> = file
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.ggml_type.name, t.dims.clone()))
        .collect();
    let (h, f, v, p) = (
        HIDDEN as u64,
        FF as u64,
        VOCAB.len() as u64,
        POSITIONS as u64,
    );
    let mut want: Vec<(String, &str, Vec<u64>)> = vec![
        ("token_embd.weight".into(), "Q8_0", vec![h, v]),
        ("position_embd.weight".into(), "F32", vec![h, p]),
        ("token_types.weight".into(), "F32", vec![h, 2]),
        ("token_embd_norm.weight".into(), "F32", vec![h]),
        ("token_embd_norm.bias".into(), "F32", vec![h]),
    ];
    for n in 0..LAYERS {
        for (name, dims) in [
            ("attn_q", vec![h, h]),
            ("attn_k", vec![h, h]),
            ("attn_v", vec![h, h]),
            ("attn_output", vec![h, h]),
            ("ffn_up", vec![h, f]),
            ("ffn_down", vec![f, h]),
        ] {
            let rows = dims[1];
            want.push((format!("blk.{n}.{name}.weight"), "Q8_0", dims));
            want.push((format!("blk.{n}.{name}.bias"), "F32", vec![rows]));
        }
        for name in ["attn_output_norm", "layer_output_norm"] {
            want.push((format!("blk.{n}.{name}.weight"), "F32", vec![h]));
            want.push((format!("blk.{n}.{name}.bias"), "F32", vec![h]));
        }
    }
    let mut got = got;
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn sentence_transformers_folders_pool_by_mean_without_a_pooling_config() {
    let dir = bert_folder("gguf-ckpt-bert-mean");
    std::fs::remove_dir_all(dir.join("1_Pooling")).unwrap();
    let out = dir.parent().unwrap().join("bert.gguf");
    let summary = ok(&dir, &out);
    assert!(summary.contains("mean pooling"), "{summary}");
    let file = GgufFile::open(&out).unwrap();
    // LLAMA_POOLING_TYPE_MEAN.
    assert_eq!(value(&file, "bert.pooling_type"), Some(Value::UInt(1)));
}

#[test]
fn a_bert_config_without_a_hyperparameter_is_refused_naming_it() {
    for (key, gguf) in [
        ("hidden_size", "bert.embedding_length"),
        ("num_hidden_layers", "bert.block_count"),
        ("layer_norm_eps", "bert.attention.layer_norm_epsilon"),
    ] {
        let dir = bert_folder("gguf-ckpt-bert-no-key");
        let mut cfg = config();
        cfg.as_object_mut().unwrap().remove(key);
        write_json(&dir.join("config.json"), &cfg);
        let err = refused(&dir, &dir.parent().unwrap().join("bert.gguf"));
        assert!(
            err.contains(&format!(
                "BERT without '{key}', which llama.cpp needs as {gguf}"
            )),
            "{key}: {err}"
        );
        assert!(err.contains("config.json"), "{err}");
    }
}

#[test]
fn a_bert_folder_without_vocab_txt_is_refused() {
    let dir = bert_folder("gguf-ckpt-bert-no-vocab");
    std::fs::remove_file(dir.join("vocab.txt")).unwrap();
    let err = refused(&dir, &dir.parent().unwrap().join("bert.gguf"));
    assert!(err.contains("vocab.txt: missing"), "{err}");
}

/// A tensor the name table does not know is refused, naming it: llama.cpp refuses a file with
/// tensors its BERT graph does not use, so keeping it under its own name would give a file
/// that does not load.
#[test]
fn a_tensor_the_name_map_does_not_know_is_refused_naming_it() {
    let dir = bert_folder("gguf-ckpt-bert-unknown");
    let mut all = tensors();
    all.push(Tensor::f32(
        "classifier.weight",
        &[2, HIDDEN],
        &values(2 * HIDDEN, 99),
    ));
    write_safetensors(&dir.join("model.safetensors"), &all);
    let err = refused(&dir, &dir.parent().unwrap().join("bert.gguf"));
    assert!(
        err.contains("no llama.cpp name for 1 tensor(s): classifier.weight"),
        "{err}"
    );
    // And a tensor llama.cpp needs that the checkpoint lacks.
    let fewer: Vec<Tensor> = tensors()
        .into_iter()
        .filter(|t| t.name != "encoder.layer.1.output.dense.bias")
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &fewer);
    let err = refused(&dir, &dir.parent().unwrap().join("bert.gguf"));
    assert!(err.contains("missing 1 tensor(s)"), "{err}");
    assert!(err.contains("blk.1.ffn_down.bias"), "{err}");
}

#[test]
fn a_vocabulary_of_another_length_than_vocab_size_is_refused() {
    let dir = bert_folder("gguf-ckpt-bert-vocab-size");
    std::fs::write(dir.join("vocab.txt"), VOCAB[..8].join("\n")).unwrap();
    let err = refused(&dir, &dir.parent().unwrap().join("bert.gguf"));
    assert!(
        err.contains("8 tokens, but config.json's vocab_size is 12"),
        "{err}"
    );
}

/// A checkpoint of no known architecture: its own names and general.name only, and the summary
/// says llama.cpp will not load it.
#[test]
fn an_unknown_architecture_keeps_its_names_and_says_llama_cpp_will_not_load_it() {
    let dir = scratch("gguf-ckpt-unknown").join("thing");
    write_safetensors(
        &dir.join("model.safetensors"),
        &[Tensor::f32("net.proj.weight", &[32, 32], &values(1024, 3))],
    );
    let out = dir.parent().unwrap().join("thing.gguf");
    let summary = ok(&dir, &out);
    assert!(
        summary.contains("GGUF without architecture keys")
            && summary.contains("llama.cpp will not load"),
        "{summary}"
    );
    let file = GgufFile::open(&out).unwrap();
    assert_eq!(value(&file, "general.architecture"), None);
    assert_eq!(
        value(&file, "general.name"),
        Some(Value::String("thing".into()))
    );
    assert_eq!(file.tensors()[0].name, "net.proj.weight");
}

/// A diffusers UNet folder (the bundled tiny UNet) gets ComfyUI-GGUF's architecture key, `sd1`
/// (a diffusers SD1 UNet: down_blocks.0.downsamplers.0.conv.weight, no add_embedding), under its
/// checkpoint names; a pipeline folder, whose names carry component prefixes, gets none.
#[test]
fn a_diffusers_unet_gets_comfyui_ggufs_architecture_key_and_keeps_its_names() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch("gguf-ckpt-unet");
    let out = dir.join("unet.gguf");
    let summary = ok(&root.join("examples/models/tiny-unet"), &out);
    assert!(
        summary.contains("GGUF for ComfyUI-GGUF: architecture sd1"),
        "{summary}"
    );
    let file = GgufFile::open(&out).unwrap();
    assert_eq!(
        value(&file, "general.architecture"),
        Some(Value::String("sd1".into()))
    );
    assert!(file.tensors().iter().any(|t| t.name == "conv_in.weight"));
}
