//! `arrowquant quantize FOLDER --format gguf` on a Hugging Face BERT folder made here (tiny
//! dims): the file has llama.cpp's `bert` architecture keys, the hyperparameters of
//! config.json, the pooling of 1_Pooling/config.json, the WordPiece vocabulary of vocab.txt
//! (as benches/llama_cpp/make_f32_gguf.py writes them) and llama.cpp's tensor names; the
//! refusals name what is missing or unknown. An unknown architecture keeps its checkpoint
//! names and says llama.cpp will not load the file.

mod common;

use std::path::{Path, PathBuf};

use arrowquant::model::gguf_file::{GgufFile, Value};
use common::meta_value as value;
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

/// Runs the binary on `model` with `scheme`, `--pure` when asked.
fn quantize_as(model: &Path, out: &Path, scheme: &str, pure: bool) -> String {
    let mut args = vec![
        "quantize",
        "-q",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--scheme",
        scheme,
    ];
    if pure {
        args.push("--pure");
    }
    let o = arrowquant(&args, model.parent().unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// Every tensor of a table function's weights table: its dtype and its values, rows in order
/// (for a reshaped tensor, the original row-major order).
fn flat_values(
    function: &str,
    path: &Path,
) -> std::collections::HashMap<String, (String, Vec<f32>)> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Float32Type;
    let sql = format!(
        "SELECT layer, dtype, weights FROM {function}('{}') ORDER BY layer, row",
        path.display()
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let batches = runtime.block_on(async {
        let ctx = arrowquant::session::context();
        ctx.sql(&sql).await.unwrap().collect().await.unwrap()
    });
    let mut out = std::collections::HashMap::<String, (String, Vec<f32>)>::new();
    for b in &batches {
        let layer = b.column(0).as_string::<i32>();
        let dtype = b.column(1).as_string::<i32>();
        let weights = b.column(2).as_list::<i32>();
        for i in 0..b.num_rows() {
            let row = weights.value(i);
            let entry = out
                .entry(layer.value(i).to_string())
                .or_insert_with(|| (dtype.value(i).to_string(), Vec::new()));
            entry
                .1
                .extend_from_slice(row.as_primitive::<Float32Type>().values());
        }
    }
    out
}

/// The `comfy.gguf.orig_shape.NAME` keys: each an ARRAY of INT32, as ComfyUI-GGUF's loader
/// (`get_orig_shape`) requires.
fn orig_shapes(file: &GgufFile) -> std::collections::HashMap<String, Vec<usize>> {
    use arrowquant::model::gguf_file::ValueType;
    file.header()
        .metadata
        .iter()
        .filter_map(|e| {
            let name = e.key.strip_prefix("comfy.gguf.orig_shape.")?;
            assert_eq!(e.value_type, ValueType::Array, "{}", e.key);
            assert_eq!(e.item_type, Some(ValueType::I32), "{}", e.key);
            let dims: Vec<usize> = serde_json::from_str(&file.json(e)).unwrap();
            Some((name.to_string(), dims))
        })
        .collect()
}

/// Checks one tensor's values read back against the checkpoint's, within its type's error:
/// F32 exact, F16 and BF16 within their rounding, Q8_0 within 1.5 steps (its block's largest
/// value / 127: the scale search may clip, by 1.06 steps at most on the tiny UNet) of every
/// value of its block of 32 (blocks run along the file's rows, so along the flattened values),
/// other block types by cosine.
fn assert_within_type(name: &str, ty: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}");
    match ty {
        "F32" => assert_eq!(got, want, "{name}"),
        "F16" | "BF16" => {
            let rel = if ty == "F16" {
                1.0 / 2048.0
            } else {
                1.0 / 256.0
            };
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= w.abs() * rel + 1e-7, "{name}: {g} vs {w}");
            }
        }
        "Q8_0" => {
            for (g, w) in got.chunks(32).zip(want.chunks(32)) {
                let step = w.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for (a, b) in g.iter().zip(w) {
                    assert!((a - b).abs() <= step * 1.5 + 1e-7, "{name}: {a} vs {b}");
                }
            }
        }
        _ => {
            let dot: f64 = got.iter().zip(want).map(|(a, b)| (a * b) as f64).sum();
            let aa: f64 = got.iter().map(|a| (a * a) as f64).sum();
            let bb: f64 = want.iter().map(|b| (b * b) as f64).sum();
            let cosine = dot / (aa * bb).sqrt();
            assert!(cosine > 0.99, "{name} ({ty}): cosine {cosine}");
        }
    }
}

/// The bundled tiny UNet (`sd1`) as ComfyUI-GGUF writes UNets, with and without `--pure`:
/// its keep list (conv_in, conv_out, time_embedding) unquantized in the type its converter
/// gives (F32 for 1-D tensors and tensors of at most 1024 values from an F32 checkpoint, F16
/// otherwise); every tensor of more than one dimension whose count 256 divides and whose
/// innermost dimension it does not reshaped to `[n / 256, 256]` with its original shape
/// (outermost first) in `comfy.gguf.orig_shape.NAME`, kept ones included; the others quantized
/// in q8_0 in those rows; element counts and values (the reshape undone) those of the checkpoint.
#[test]
fn a_unet_is_written_as_comfyui_gguf_writes_unets() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("examples/models/tiny-unet");
    let src = model.join("diffusion_pytorch_model.safetensors");
    let dir = scratch("gguf-ckpt-unet-comfy");
    let want = flat_values("read_safetensors", &src);
    let shapes: std::collections::HashMap<String, Vec<usize>> = {
        let st = arrowquant::model::SafetensorsFile::open(&src).unwrap();
        st.tensors()
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect()
    };
    for pure in [true, false] {
        let out = dir.join(format!("unet-{pure}.gguf"));
        let summary = quantize_as(&model, &out, "q8_0", pure);
        assert!(
            summary.contains("GGUF for ComfyUI-GGUF: architecture sd1")
                && summary.contains("74 tensors reshaped to rows of 256"),
            "{summary}"
        );
        let file = GgufFile::open(&out).unwrap();
        let orig = orig_shapes(&file);
        assert_eq!(file.tensors().len(), shapes.len());
        let mut quantized = 0;
        for t in file.tensors() {
            let shape = &shapes[&t.name];
            let n: usize = shape.iter().product();
            assert_eq!(t.elements(), n, "{}", t.name);
            let reshape = shape.len() > 1
                && n >= 512
                && n.is_multiple_of(256)
                && !shape[shape.len() - 1].is_multiple_of(256);
            if reshape {
                assert_eq!(t.dims, [256, n as u64 / 256], "{}", t.name);
                assert_eq!(orig.get(&t.name), Some(shape), "{}", t.name);
            } else {
                let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
                assert_eq!(t.dims, dims, "{}", t.name);
                assert!(!orig.contains_key(&t.name), "{}", t.name);
            }
            let keep_list = ["conv_in.", "conv_out.", "time_embedding."]
                .iter()
                .any(|p| t.name.contains(p));
            let ty = t.ggml_type.name;
            if shape.len() == 1 || (keep_list && n <= 1024) {
                assert_eq!(ty, "F32", "{}", t.name);
            } else if keep_list {
                assert_eq!(ty, "F16", "{}", t.name);
            } else {
                // Every other tensor of this UNet is a weight reshaped to rows of 256.
                assert!(reshape, "{}", t.name);
                assert!(t.ggml_type.block_values > 1, "{}: {ty}", t.name);
                if pure {
                    assert_eq!(ty, "Q8_0", "{}", t.name);
                }
                quantized += 1;
            }
        }
        assert_eq!(quantized, 72);
        assert_eq!(orig.len(), 74);
        // conv_in (864 values: not reshaped) stays 4-D.
        let conv_in = file.tensors().iter().find(|t| t.name == "conv_in.weight");
        assert_eq!(conv_in.unwrap().dims, [3, 3, 3, 32]);
        let got = flat_values("read_gguf", &out);
        assert_eq!(got.len(), want.len());
        for (name, (ty, values)) in &got {
            assert_within_type(name, ty, values, &want[name].1);
        }
    }
}

/// A UNet of edge cases, detected as `sd1`, in q4_K: a convolution of 1080 values (256 does
/// not divide it) is not reshaped, so it stays 4-D and unquantized, in F16 (more than 1024
/// values from F32) as ComfyUI-GGUF's converter writes it; 4-D ones of at most 1024 values, or
/// under 512 values, stay F32; a 2-D weight of at most 1024 values is quantized all the same
/// (only the converter's type looks at that count, llama-quantize does not); a 2-D weight whose
/// rows q4_K's blocks do not divide is F16 (the patch's fallback, not llama.cpp's q5_0); the
/// original layout's conv_out (`out.2.weight`) is kept although reshaped; BF16 tensors stay BF16
/// (1-D ones F32) and 1-D F16 tensors F16.
#[test]
fn a_unets_edge_cases_are_kept_as_comfyui_gguf_keeps_them() {
    let dir = scratch("gguf-ckpt-unet-edges").join("unet");
    let mut seed = 10;
    let mut f32 = |name: &str, shape: &[usize]| {
        seed += 1;
        Tensor::f32(name, shape, &values(shape.iter().product(), seed))
    };
    let half = |name: &str, dtype: Dtype, shape: &[usize]| {
        let v = values(shape.iter().product(), 99);
        let bytes = v
            .iter()
            .flat_map(|x| match dtype {
                Dtype::BF16 => half::bf16::from_f32(*x).to_le_bytes(),
                _ => half::f16::from_f32(*x).to_le_bytes(),
            })
            .collect();
        Tensor::raw(name, dtype, shape, bytes)
    };
    let tensors = vec![
        f32("down_blocks.0.downsamplers.0.conv.weight", &[32, 32, 3, 3]),
        f32("down_blocks.0.downsamplers.0.conv.bias", &[32]),
        f32("down_blocks.0.resnets.0.conv1.weight", &[10, 12, 3, 3]),
        f32("down_blocks.0.resnets.0.conv2.weight", &[4, 4, 3, 3]),
        f32(
            "down_blocks.0.resnets.0.conv_shortcut.weight",
            &[2, 128, 1, 1],
        ),
        f32("mid_block.attentions.0.to_q.weight", &[256, 256]),
        f32("mid_block.attentions.0.to_k.weight", &[2, 512]),
        f32("mid_block.attentions.0.to_v.weight", &[4, 96]),
        f32("out.2.weight", &[4, 64, 3, 3]),
        half("time_embedding.linear_1.weight", Dtype::BF16, &[128, 32]),
        half("time_embedding.linear_1.bias", Dtype::BF16, &[128]),
        half("time_embedding.linear_2.bias", Dtype::F16, &[128]),
    ];
    write_safetensors(&dir.join("diffusion_pytorch_model.safetensors"), &tensors);
    let out = dir.parent().unwrap().join("edges.gguf");
    let summary = quantize_as(&dir, &out, "q4_K", true);
    assert!(
        summary.contains("architecture sd1") && summary.contains("3 tensors reshaped"),
        "{summary}"
    );
    let file = GgufFile::open(&out).unwrap();
    let orig = orig_shapes(&file);
    let get = |name: &str| {
        let t = file.tensors().iter().find(|t| t.name == name).unwrap();
        (t.ggml_type.name, t.dims.clone())
    };
    let cases: &[(&str, &str, &[u64])] = &[
        (
            "down_blocks.0.downsamplers.0.conv.weight",
            "Q4_K",
            &[256, 36],
        ),
        ("down_blocks.0.downsamplers.0.conv.bias", "F32", &[32]),
        (
            "down_blocks.0.resnets.0.conv1.weight",
            "F16",
            &[3, 3, 12, 10],
        ),
        ("down_blocks.0.resnets.0.conv2.weight", "F32", &[3, 3, 4, 4]),
        (
            "down_blocks.0.resnets.0.conv_shortcut.weight",
            "F32",
            &[1, 1, 128, 2],
        ),
        ("mid_block.attentions.0.to_q.weight", "Q4_K", &[256, 256]),
        ("mid_block.attentions.0.to_k.weight", "Q4_K", &[512, 2]),
        ("mid_block.attentions.0.to_v.weight", "F16", &[96, 4]),
        ("out.2.weight", "F16", &[256, 9]),
        ("time_embedding.linear_1.weight", "BF16", &[256, 16]),
        ("time_embedding.linear_1.bias", "F32", &[128]),
        ("time_embedding.linear_2.bias", "F16", &[128]),
    ];
    for (name, ty, dims) in cases {
        assert_eq!(get(name), (*ty, dims.to_vec()), "{name}");
    }
    let mut keys: Vec<&str> = orig.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "down_blocks.0.downsamplers.0.conv.weight",
            "out.2.weight",
            "time_embedding.linear_1.weight"
        ]
    );
    assert_eq!(orig["out.2.weight"], [4, 64, 3, 3]);
    assert_eq!(orig["time_embedding.linear_1.weight"], [128, 32]);
    let want = flat_values("read_safetensors", &dir);
    for (name, (ty, values)) in flat_values("read_gguf", &out) {
        assert_within_type(&name, &ty, &values, &want[&name].1);
    }
}

/// A model that is neither `sd1` nor `sdxl` (a VAE-like checkpoint: no UNet's detection keys)
/// takes none of ComfyUI-GGUF's UNet rules: no reshape, no `comfy.gguf.orig_shape` key, its
/// conv_in and time_embedding quantized as llama.cpp would, 3×3 convolutions in F16 (rows of 3
/// values fit no block).
#[test]
fn a_model_that_is_not_a_unet_takes_none_of_comfyui_ggufs_rules() {
    let dir = scratch("gguf-ckpt-not-unet").join("vae");
    write_safetensors(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &[
            Tensor::f32("encoder.conv_in.weight", &[32, 32, 3, 3], &values(9216, 1)),
            Tensor::f32("encoder.conv_in.bias", &[32], &values(32, 2)),
            Tensor::f32(
                "time_embedding.linear_1.weight",
                &[64, 64],
                &values(4096, 3),
            ),
        ],
    );
    let out = dir.parent().unwrap().join("vae.gguf");
    let summary = quantize_as(&dir, &out, "q8_0", true);
    assert!(
        summary.contains("GGUF without architecture keys"),
        "{summary}"
    );
    let file = GgufFile::open(&out).unwrap();
    assert!(orig_shapes(&file).is_empty());
    let get = |name: &str| {
        let t = file.tensors().iter().find(|t| t.name == name).unwrap();
        (t.ggml_type.name, t.dims.clone())
    };
    assert_eq!(get("encoder.conv_in.weight"), ("F16", vec![3, 3, 32, 32]));
    assert_eq!(get("encoder.conv_in.bias"), ("F32", vec![32]));
    assert_eq!(
        get("time_embedding.linear_1.weight"),
        ("Q8_0", vec![64, 64])
    );
}
