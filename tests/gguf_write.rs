//! `arrowquant quantize … -o OUT.gguf` run as the real binary on real GGUF files: every key of
//! the input carried, `general.file_type` and the `quantize.*` keys set, tensors of the types and
//! dimensions llama.cpp expects, bytes that read back through `read_gguf` equal to what
//! `quantize` and `dequantize` give; and the refusals (a scheme without a GGUF type, an existing
//! OUT, a run failing part-way) leaving nothing behind.

mod common;

use std::path::{Path, PathBuf};

use arrowquant::model::gguf_file::{GgmlType, GgufFile, Value};
use arrowquant::model::gguf_write::{MetaValue, TensorToWrite, write_gguf};
use common::*;
use common::{meta_text as text, meta_value as value};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Float32Type, Int64Type};

const LLAMA: &str = "tests/data/gguf/llama-f32.gguf";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn input() -> PathBuf {
    root().join(LLAMA)
}

fn run(args: &[&str]) -> std::process::Output {
    let mut all = vec!["quantize", "-q"];
    all.extend_from_slice(args);
    arrowquant(&all, &root())
}

fn ok(args: &[&str]) -> std::process::Output {
    let out = run(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

/// Files left in a directory besides `keep`: no partial may remain.
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn every_key_is_carried_and_the_file_type_and_provenance_are_set() {
    let dir = scratch("gguf-write-keys");
    let out = dir.join("out.gguf");
    let before = std::fs::read(input()).unwrap();
    ok(&[
        LLAMA,
        "-o",
        out.to_str().unwrap(),
        "--scheme",
        "q8_0",
        "--pure",
    ]);
    assert_eq!(std::fs::read(input()).unwrap(), before, "the input changed");
    let (a, b) = (
        GgufFile::open(&input()).unwrap(),
        GgufFile::open(&out).unwrap(),
    );
    // Every input key but general.file_type, with the same type and the same encoded bytes.
    for e in &a.header().metadata {
        let f = b.header().metadata.iter().find(|f| f.key == e.key);
        let f = f.unwrap_or_else(|| panic!("{} was not carried", e.key));
        if e.key == "general.file_type" {
            continue;
        }
        assert_eq!(
            (e.value_type, e.item_type),
            (f.value_type, f.item_type),
            "{}",
            e.key
        );
        let bytes =
            |file: &GgufFile, r: &std::ops::Range<usize>| file.bytes(r.start, r.len()).to_vec();
        assert_eq!(bytes(&a, &e.value), bytes(&b, &f.value), "{}", e.key);
    }
    assert_eq!(value(&a, "general.file_type"), Some(Value::UInt(0)));
    // LLAMA_FTYPE_MOSTLY_Q8_0.
    assert_eq!(value(&b, "general.file_type"), Some(Value::UInt(7)));
    assert_eq!(
        value(&b, "general.quantization_version"),
        Some(Value::UInt(2))
    );
    assert_eq!(text(&b, "quantize.tool"), "arrowquant");
    assert_eq!(text(&b, "quantize.version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(text(&b, "quantize.scheme"), "q8_0");
    assert_eq!(value(&b, "quantize.pure"), Some(Value::Bool(true)));
    // The 40-value rows fit no Q8_0 block: F16, and said so.
    let mixture = text(&b, "quantize.mixture");
    assert!(mixture.contains("blk.0.odd.weight=F16"), "{mixture}");
    assert_eq!(b.header().alignment, 64, "general.alignment carried");

    // The tensors: same names, order and dimensions; the types llama.cpp would choose.
    let types: Vec<(&str, &str)> = b
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.ggml_type.name))
        .collect();
    assert_eq!(
        types,
        [
            ("token_embd.weight", "Q8_0"),
            ("blk.0.attn_norm.weight", "F32"),
            ("blk.0.attn_q.weight", "Q8_0"),
            ("blk.0.attn_k.weight", "Q8_0"),
            ("blk.0.attn_v.weight", "Q8_0"),
            ("blk.0.ffn_gate_inp.weight", "F32"),
            ("blk.0.ffn_up_exps.weight", "Q8_0"),
            ("blk.0.ffn_down.weight", "Q8_0"),
            ("blk.0.odd.weight", "F16"),
            ("output_norm.weight", "F32"),
            ("output.weight", "Q8_0"),
        ]
    );
    for (ta, tb) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(ta.dims, tb.dims, "{}", ta.name);
        // Kept tensors are the input's bytes exactly.
        if ta.ggml_type == tb.ggml_type && ta.ggml_type.name != "F32" || ta.dims.len() == 1 {
            assert_eq!(
                a.bytes(ta.start, ta.len),
                b.bytes(tb.start, tb.len),
                "{}",
                ta.name
            );
        }
    }
}

/// The output's rows read back through read_gguf are quantize's codes of the input's rows, and
/// decode to dequantize of them, bit for bit.
#[tokio::test]
async fn the_bytes_are_quantizes_codes_and_decode_as_dequantize() {
    let dir = scratch("gguf-write-bytes");
    for (scheme, bits, ty) in [("q8_0", 8, "Q8_0"), ("q4_0", 4, "Q4_0")] {
        let out = dir.join(format!("{scheme}.gguf"));
        ok(&[
            LLAMA,
            "-o",
            out.to_str().unwrap(),
            "--scheme",
            scheme,
            "--pure",
        ]);
        let sql = format!(
            "SELECT count(*) AS n,
                    count(*) FILTER (WHERE o.data = quantize(i.weights, {bits}, 32, '{scheme}')['codes']) AS same_codes,
                    count(*) FILTER (WHERE o.weights = dequantize(quantize(i.weights, {bits}, 32, '{scheme}'))) AS same_values
             FROM read_gguf('{}') o JOIN read_gguf('{}') i ON o.layer = i.layer AND o.row = i.row
             WHERE o.dtype = '{ty}' AND i.dtype <> '{ty}'",
            out.display(),
            input().display()
        );
        let ctx = arrowquant::session::context();
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let get = |c: &str| {
            batches[0]
                .column_by_name(c)
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0)
        };
        // token_embd 8, attn_q 16, attn_k 8, ffn_up_exps 2, ffn_down 4 (q4_0 only), output 8.
        let rows = 46;
        assert_eq!(get("n"), rows, "{scheme}");
        assert_eq!(get("same_codes"), rows, "{scheme}: codes differ");
        assert_eq!(get("same_values"), rows, "{scheme}: values differ");
        // The F16 fallback holds the values rounded to f16.
        let f16 = format!(
            "SELECT o.weights AS o, i.weights AS i
             FROM read_gguf('{}') o JOIN read_gguf('{}') i ON o.layer = i.layer AND o.row = i.row
             WHERE o.layer = 'blk.0.odd.weight'",
            out.display(),
            input().display()
        );
        let b = ctx.sql(&f16).await.unwrap().collect().await.unwrap();
        let values = |c: &str| -> Vec<f32> {
            let list = b[0].column_by_name(c).unwrap().as_list::<i32>();
            list.values()
                .as_primitive::<Float32Type>()
                .values()
                .to_vec()
        };
        let rounded: Vec<f32> = values("i")
            .iter()
            .map(|v| half::f16::from_f32(*v).to_f32())
            .collect();
        assert_eq!(b[0].num_rows(), 3);
        assert_eq!(values("o"), rounded);
    }
}

#[test]
fn without_pure_sensitive_tensors_are_wider_and_the_mixture_says_so() {
    let dir = scratch("gguf-write-mixture");
    let out = dir.join("out.gguf");
    ok(&[LLAMA, "-o", out.to_str().unwrap(), "--scheme", "q4_0"]);
    let b = GgufFile::open(&out).unwrap();
    let ty = |name: &str| {
        b.tensors()
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .ggml_type
            .name
    };
    assert_eq!(ty("token_embd.weight"), "Q8_0");
    assert_eq!(ty("output.weight"), "Q8_0");
    assert_eq!(ty("blk.0.attn_q.weight"), "Q4_0");
    assert_eq!(value(&b, "general.file_type"), Some(Value::UInt(2)));
    assert_eq!(value(&b, "quantize.pure"), Some(Value::Bool(false)));
    let mixture = text(&b, "quantize.mixture");
    assert!(
        mixture.contains("token_embd.weight=Q8_0: embedding"),
        "{mixture}"
    );
    assert!(
        mixture.contains("output.weight=Q8_0: output head"),
        "{mixture}"
    );
    // A threshold no 4-bit tensor meets: each is redone at q5_0, then q8_0.
    let strict = dir.join("strict.gguf");
    let o = ok(&[
        LLAMA,
        "-o",
        strict.to_str().unwrap(),
        "--scheme",
        "q4_0",
        "--min-cosine",
        "0.9999",
    ]);
    let b = GgufFile::open(&strict).unwrap();
    let q = b
        .tensors()
        .iter()
        .find(|t| t.name == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(q.ggml_type.name, "Q8_0");
    assert!(stdout(&o).contains("redone wider"), "{}", stdout(&o));
}

#[test]
fn a_scheme_without_a_gguf_type_is_refused_before_any_work() {
    let dir = scratch("gguf-write-scheme");
    let out = dir.join("out.gguf");
    for scheme in ["asym", "sym_minmax"] {
        let o = run(&[LLAMA, "-o", out.to_str().unwrap(), "--scheme", scheme]);
        assert_fails_with(
            &o,
            &format!("scheme '{scheme}' has no GGUF type: GGUF output takes"),
        );
        assert!(stderr(&o).contains("q8_0"), "{}", stderr(&o));
    }
    // The profile's default scheme (asym) too, and --format gguf chooses GGUF as -o does.
    let o = run(&[LLAMA, "--format", "gguf", "-o", out.to_str().unwrap()]);
    assert_fails_with(&o, "scheme 'asym' has no GGUF type");
    assert!(others(&dir, &[]).is_empty(), "{:?}", others(&dir, &[]));
    // A GGUF model written as a directory, --pure with Parquet output: refused by name.
    let o = run(&[
        LLAMA,
        "--format",
        "parquet",
        "-o",
        dir.join("d").to_str().unwrap(),
    ]);
    assert_fails_with(&o, "a GGUF model is written as GGUF");
    let o = run(&[
        "examples/models/tiny-unet",
        "--pure",
        "-o",
        dir.join("d").to_str().unwrap(),
    ]);
    assert_fails_with(&o, "pure: applies to GGUF output only");
    let o = run(&[
        "examples/models/tiny-unet",
        "--gguf-target",
        "sd.cpp",
        "-o",
        dir.join("d").to_str().unwrap(),
    ]);
    assert_fails_with(&o, "gguf_target: applies to GGUF output only");
    let o = run(&[LLAMA, "--format", "onnx", "-o", out.to_str().unwrap()]);
    assert_fails_with(&o, "key 'format': 'onnx' is not parquet or gguf");
    assert!(others(&dir, &[]).is_empty(), "{:?}", others(&dir, &[]));
}

#[test]
fn an_existing_out_is_refused_without_force_and_replaced_with_it() {
    let dir = scratch("gguf-write-exists");
    let out = dir.join("out.gguf");
    std::fs::write(&out, b"not mine").unwrap();
    let o = run(&[LLAMA, "-o", out.to_str().unwrap(), "--scheme", "q8_0"]);
    assert_fails_with(&o, "already exists (use --force to replace it)");
    assert_eq!(std::fs::read(&out).unwrap(), b"not mine");
    ok(&[
        LLAMA,
        "-o",
        out.to_str().unwrap(),
        "--scheme",
        "q8_0",
        "--force",
    ]);
    assert!(GgufFile::open(&out).is_ok());
    assert_eq!(others(&dir, &["out.gguf"]), Vec::<String>::new());
    // The output may never be the input.
    let o = run(&[LLAMA, "-o", LLAMA, "--scheme", "q8_0", "--force"]);
    assert_fails_with(&o, "would replace the input model");
}

/// A model whose second quantized tensor holds a NaN: the run fails on it, naming it, after the
/// first was written, and leaves neither OUT nor a partial file.
#[test]
fn a_run_failing_part_way_leaves_nothing() {
    let dir = scratch("gguf-write-fail");
    let good: Vec<u8> = (0..64 * 4)
        .flat_map(|i| (i as f32 / 100.0).to_le_bytes())
        .collect();
    let mut bad = good.clone();
    bad[4 * 70..4 * 71].copy_from_slice(&f32::NAN.to_le_bytes());
    let f32 = GgmlType::from_name("F32").unwrap();
    let tensors = [
        TensorToWrite {
            name: "blk.0.attn_q.weight",
            ggml_type: f32,
            dims: vec![64, 4],
            data: &good,
        },
        TensorToWrite {
            name: "blk.0.attn_k.weight",
            ggml_type: f32,
            dims: vec![64, 4],
            data: &bad,
        },
    ];
    let model = dir.join("nan.gguf");
    let mut bytes = Vec::new();
    let arch = (
        "general.architecture".to_string(),
        MetaValue::String("llama".into()),
    );
    write_gguf(&mut bytes, &[arch], &tensors).unwrap();
    std::fs::write(&model, &bytes).unwrap();
    for pure in [true, false] {
        let out = dir.join("out.gguf");
        let mut args = vec![
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--scheme",
            "q8_0",
        ];
        if pure {
            args.push("--pure");
        }
        let o = run(&args);
        assert_fails_with(&o, "tensor 'blk.0.attn_k.weight' row 1");
        assert!(!out.exists());
        assert_eq!(
            others(&dir, &["nan.gguf"]),
            Vec::<String>::new(),
            "pure: {pure}"
        );
    }
    assert_eq!(std::fs::read(&model).unwrap(), bytes, "the input changed");
}

#[test]
fn a_default_name_is_model_and_scheme() {
    let dir = scratch("gguf-write-default");
    std::fs::copy(input(), dir.join("m.gguf")).unwrap();
    let o = arrowquant(
        &["quantize", "-q", "m.gguf", "--scheme", "q8_0", "--pure"],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("output: m-q8_0.gguf"), "{}", stdout(&o));
    assert!(GgufFile::open(&dir.join("m-q8_0.gguf")).is_ok());
}

/// A safetensors checkpoint (the bundled diffusers UNet, ComfyUI-GGUF's `sd1`) to GGUF as
/// ComfyUI-GGUF writes UNets: tensors under their checkpoint names with their element counts,
/// those whose innermost dimension 256 does not divide reshaped to rows of 256 (the 3×3 and 1×1
/// convolutions and the 64- and 128-wide linears) and quantized in the scheme's type, its keep
/// list unquantized (time_embedding in F16, conv_in in F32: 864 values), and every value read
/// back, the reshape undone, equal to the input's within the type's error.
#[test]
fn a_safetensors_checkpoint_is_written_as_gguf_under_its_names() {
    let dir = scratch("gguf-write-checkpoint");
    let out = dir.join("unet.gguf");
    ok(&[
        "examples/models/tiny-unet",
        "-o",
        out.to_str().unwrap(),
        "--scheme",
        "q8_0",
        "--pure",
    ]);
    let file = GgufFile::open(&out).unwrap();
    let types = |name: &str| {
        file.tensors()
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .ggml_type
            .name
    };
    assert_eq!(types("time_embedding.linear_1.weight"), "F16");
    assert_eq!(types("conv_in.bias"), "F32");
    assert_eq!(types("conv_in.weight"), "F32");
    assert_eq!(types("down_blocks.0.resnets.0.conv1.weight"), "Q8_0");
    let conv = file
        .tensors()
        .iter()
        .find(|t| t.name == "down_blocks.0.resnets.0.conv1.weight")
        .unwrap();
    assert_eq!(conv.dims, [256, 36]);
    assert_eq!(text(&file, "quantize.scheme"), "q8_0");
    assert_eq!(value(&file, "general.file_type"), Some(Value::UInt(7)));
    // Every tensor of the checkpoint is there with its element count, and the quantized ones
    // read back within q8_0's error, each tensor's rows flattened in order (which undoes the
    // reshape).
    let sql = format!(
        "SELECT (SELECT count(*) FROM gguf_info('{out}')) AS tensors,
                (SELECT count(*) FROM gguf_info('{out}') g JOIN safetensors_info('{src}') s
                   ON g.layer = s.layer AND g.elements = s.elements) AS same_sizes,
                (SELECT min(c) FROM (SELECT tensor_cosine(g.w, s.w) AS c
                   FROM (SELECT layer, min(dtype) AS dtype,
                           flatten(array_agg(weights ORDER BY row)) AS w
                         FROM read_gguf('{out}') GROUP BY layer) g
                   JOIN (SELECT layer, flatten(array_agg(weights ORDER BY row)) AS w
                         FROM read_safetensors('{src}') GROUP BY layer) s
                   ON g.layer = s.layer
                   WHERE g.dtype = 'Q8_0' GROUP BY g.layer)) AS min_cosine,
                (SELECT count(DISTINCT layer) FROM read_gguf('{out}')
                   WHERE dtype = 'Q8_0') AS quantized",
        out = out.display(),
        src = root().join("examples/models/tiny-unet").display(),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let batches = runtime.block_on(async {
        let ctx = arrowquant::session::context();
        ctx.sql(&sql).await.unwrap().collect().await.unwrap()
    });
    let int = |c: &str| {
        batches[0]
            .column_by_name(c)
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0)
    };
    assert_eq!(int("tensors"), 212);
    assert_eq!(int("same_sizes"), 212);
    assert_eq!(int("quantized"), 72);
    let cosine = batches[0]
        .column_by_name("min_cosine")
        .unwrap()
        .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
        .value(0);
    assert!(cosine > 0.9999, "{cosine}");
}

/// The bundled UNet for stable-diffusion.cpp (`--gguf-target sd.cpp`): every tensor in its
/// original shape (sd.cpp's loader refuses any other), the original layout's names under
/// `model.diffusion_model.` (converted from diffusers'), no `comfy.gguf.orig_shape` keys; sd.cpp's
/// keep list (biases, time embedding, the 3×3 and 1×1 convolutions, whose rows are kernel
/// widths) unquantized and the 2-D weights in the scheme's type. Anything but a UNet is refused.
#[test]
fn a_unet_is_written_for_stable_diffusion_cpp_in_its_shapes_and_names() {
    let dir = scratch("gguf-write-sd-cpp");
    let out = dir.join("unet.gguf");
    let src = root().join("examples/models/tiny-unet");
    ok(&[
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--scheme",
        "q8_0",
        "--pure",
        "--gguf-target",
        "sd.cpp",
    ]);
    let file = GgufFile::open(&out).unwrap();
    let model = arrowquant::model::Model::open(&src).unwrap();
    assert_eq!(file.tensors().len(), model.tensors.len());
    assert!(
        file.header()
            .metadata
            .iter()
            .all(|e| !e.key.starts_with("comfy.gguf")),
        "no ComfyUI-GGUF keys"
    );
    // Every tensor is the checkpoint's shape under its original name.
    let by_name = |name: &str| {
        file.tensors()
            .iter()
            .find(|t| t.name == format!("model.diffusion_model.{name}"))
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    for (original, diffusers) in [
        ("input_blocks.0.0.weight", "conv_in.weight"),
        ("time_embed.0.weight", "time_embedding.linear_1.weight"),
        (
            "input_blocks.1.0.in_layers.2.weight",
            "down_blocks.0.resnets.0.conv1.weight",
        ),
        (
            "input_blocks.2.0.op.weight",
            "down_blocks.0.downsamplers.0.conv.weight",
        ),
        (
            "middle_block.1.to_q.weight",
            "mid_block.attentions.0.to_q.weight",
        ),
        (
            "output_blocks.2.0.emb_layers.1.weight",
            "up_blocks.1.resnets.0.time_emb_proj.weight",
        ),
        ("out.2.weight", "conv_out.weight"),
    ] {
        let t = by_name(original);
        let src = model.tensors.iter().find(|t| t.layer == diffusers).unwrap();
        let dims: Vec<u64> = src.meta.shape.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(t.dims, dims, "{original}");
    }
    for t in file.tensors() {
        assert!(t.name.starts_with("model.diffusion_model."), "{}", t.name);
        assert!(!t.name.contains("down_blocks"), "{}", t.name);
    }
    let ty = |name: &str| by_name(name).ggml_type.name;
    assert_eq!(ty("input_blocks.1.0.in_layers.2.weight"), "F32", "3x3 conv");
    assert_eq!(ty("input_blocks.1.0.in_layers.2.bias"), "F32");
    assert_eq!(ty("time_embed.0.weight"), "F32", "the time embedding");
    assert_eq!(ty("middle_block.1.to_q.weight"), "Q8_0");
    assert_eq!(ty("output_blocks.2.0.emb_layers.1.weight"), "Q8_0");

    // Not a UNet: refused, nothing written.
    let bad = dir.join("llama.gguf");
    let o = run(&[
        LLAMA,
        "-o",
        bad.to_str().unwrap(),
        "--gguf-target",
        "sd.cpp",
        "--scheme",
        "q8_0",
    ]);
    assert_fails_with(&o, "gguf_target sd.cpp");
    let o = run(&[
        "examples/models/tiny-unet",
        "-o",
        bad.to_str().unwrap(),
        "--gguf-target",
        "a1111",
    ]);
    assert_fails_with(&o, "key 'gguf_target': 'a1111' is not comfyui or sd.cpp");
    assert!(!bad.exists());
}
