//! The main job end to end, through the real binary: quantize, inspect, dequantize, and every
//! kind of bad input the issue names. Each failure must be one clear line, exit code 1, leave
//! no output behind and the input untouched.

mod common;

use std::path::Path;

use common::*;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Float64Type;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use safetensors::tensor::{Dtype, SafeTensors};

async fn read_parquet(path: &Path, sql: &str) -> Vec<datafusion::arrow::array::RecordBatch> {
    let ctx = SessionContext::new();
    ctx.register_parquet("t", path.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

fn no_partial_dirs(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".partial-"), "left behind: {name}");
    }
}

#[tokio::test]
async fn quantize_bundled_model_then_dequantize() {
    let dir = scratch("bundled");
    let before = snapshot(&bundled_model());
    let o = arrowquant(&["quantize", "-o", "out", "--quiet"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("tensors: 212 (76 quantized, 136 kept"),
        "{text}"
    );
    assert!(
        text.contains("model: image (_class_name = \"UNet2DModel\""),
        "{text}"
    );
    assert!(text.contains("cosine: min 0.99"), "{text}");
    for f in ["weights.parquet", "report.parquet", "manifest.json"] {
        assert!(dir.join("out").join(f).is_file(), "{f}");
    }
    no_partial_dirs(&dir);
    assert_eq!(snapshot(&bundled_model()), before, "input changed");

    // The report: every tensor, the sensitive ones at 8 bits, quality above the profile's bar.
    let report = read_parquet(
        &dir.join("out/report.parquet"),
        "SELECT count(*), min(cosine), \
                sum(CASE WHEN bits = 8 THEN 1 ELSE 0 END), sum(bytes_before), sum(bytes_after) \
         FROM t",
    )
    .await;
    let b = &report[0];
    assert_eq!(
        b.column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0),
        212
    );
    assert!(b.column(1).as_primitive::<Float64Type>().value(0) >= 0.99);
    // conv_in, conv_out, time_embedding.linear_1 and _2.
    assert_eq!(
        b.column(2)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0),
        4
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["config"]["profile"], "local");
    assert_eq!(manifest["modality"]["modality"], "image");
    assert_eq!(manifest["summary"]["tensors"], 212);

    // OUT exists: refused without --force, replaced with it.
    let o = arrowquant(&["quantize", "-o", "out"], &dir);
    assert_fails_with(&o, "already exists (use --force");
    let o = arrowquant(
        &[
            "quantize",
            "-o",
            "out",
            "--force",
            "--profile",
            "cloud",
            "-q",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("cosine: min 0.9999"), "{}", stdout(&o));

    // Rebuild and load with the safetensors library.
    let o = arrowquant(&["dequantize", "out", "-o", "model.safetensors"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let rebuilt = std::fs::read(dir.join("model.safetensors")).unwrap();
    let rebuilt = SafeTensors::deserialize(&rebuilt).unwrap();
    let original =
        std::fs::read(bundled_model().join("diffusion_pytorch_model.safetensors")).unwrap();
    let original = SafeTensors::deserialize(&original).unwrap();
    assert_eq!(rebuilt.len(), original.len());
    for (name, view) in original.tensors() {
        let r = rebuilt.tensor(&name).unwrap();
        assert_eq!(r.shape(), view.shape(), "{name}");
        if view.shape().len() == 1 {
            assert_eq!(r.data(), view.data(), "kept {name} must be identical");
        } else {
            let f = |b: &[u8]| -> Vec<f64> {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect()
            };
            let (a, b) = (f(view.data()), f(r.data()));
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!(dot / (na * nb) > 0.9999, "{name}: {}", dot / (na * nb));
        }
    }
    // f16 output, and an existing file refused.
    let o = arrowquant(
        &[
            "dequantize",
            "out",
            "-o",
            "model.safetensors",
            "--dtype",
            "f16",
        ],
        &dir,
    );
    assert_fails_with(&o, "already exists");
    let o = arrowquant(
        &[
            "dequantize",
            "out",
            "-o",
            "half.safetensors",
            "--dtype",
            "f16",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let half = std::fs::read(dir.join("half.safetensors")).unwrap();
    let half = SafeTensors::deserialize(&half).unwrap();
    assert_eq!(half.tensor("conv_in.weight").unwrap().dtype(), Dtype::F16);
    assert_eq!(half.tensor("conv_in.bias").unwrap().dtype(), Dtype::F32);
    let o = arrowquant(&["dequantize", "nowhere", "-o", "x.safetensors"], &dir);
    assert_fails_with(&o, "not an arrowquant output directory");
}

#[test]
fn inspect_lists_tensors_with_statistics() {
    let dir = scratch("inspect");
    let model = bundled_model();
    let o = arrowquant(&["inspect", model.to_str().unwrap()], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("| conv_in.weight"), "{text}");
    assert!(text.contains("kurtosis"), "{text}");
    assert!(
        text.contains("212 tensors, 4.66 MB in 1 file(s); modality: image"),
        "{text}"
    );
    let o = arrowquant(&["inspect", "missing.safetensors"], &dir);
    assert_fails_with(&o, "missing.safetensors: no such file or directory");
}

/// A diffusers pipeline: a UNet in F16, a sharded text encoder in BF16 with an I64 buffer.
fn write_pipeline(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(
        root.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", "CLIPTextModel"], "scheduler": ["diffusers", "DDPMScheduler"]}"#,
    )
    .unwrap();
    let halves = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect()
    };
    let bhalves = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect()
    };
    write_safetensors(
        &root.join("unet/diffusion_pytorch_model.safetensors"),
        &[
            Tensor::raw(
                "conv_in.weight",
                Dtype::F16,
                &[8, 4, 3, 3],
                halves(&values(288, 1)),
            ),
            Tensor::raw("conv_in.bias", Dtype::F16, &[8], halves(&values(8, 2))),
            Tensor::raw(
                "mid.proj.weight",
                Dtype::F16,
                &[64, 64],
                halves(&values(4096, 3)),
            ),
        ],
    );
    std::fs::write(
        root.join("unet/config.json"),
        r#"{"_class_name": "UNet2DConditionModel"}"#,
    )
    .unwrap();
    let ids: Vec<u8> = (0..16i64).flat_map(|i| i.to_le_bytes()).collect();
    write_safetensors(
        &root.join("text_encoder/model-00001-of-00002.safetensors"),
        &[Tensor::raw(
            "embed.weight",
            Dtype::BF16,
            &[32, 64],
            bhalves(&values(2048, 4)),
        )],
    );
    write_safetensors(
        &root.join("text_encoder/model-00002-of-00002.safetensors"),
        &[
            Tensor::raw("position_ids", Dtype::I64, &[1, 16], ids),
            Tensor::raw(
                "fc.weight",
                Dtype::BF16,
                &[64, 128],
                bhalves(&values(8192, 5)),
            ),
        ],
    );
    std::fs::write(
        root.join("text_encoder/model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {"embed.weight": "model-00001-of-00002.safetensors",
            "position_ids": "model-00002-of-00002.safetensors", "fc.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
}

#[tokio::test]
async fn pipeline_folder_sharded_and_mixed_dtypes() {
    let dir = scratch("pipeline");
    let model = dir.join("sd");
    write_pipeline(&model);
    let before = snapshot(&model);
    let ctx = arrowquant::session::context();
    let path = model.to_str().unwrap();
    let info = ctx
        .sql(&format!(
            "SELECT layer, dtype, bytes FROM safetensors_info('{path}') ORDER BY layer"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let layers: Vec<String> = info[0]
        .column(0)
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap().to_string())
        .collect();
    assert_eq!(
        layers,
        [
            "text_encoder.embed.weight",
            "text_encoder.fc.weight",
            "text_encoder.position_ids",
            "unet.conv_in.bias",
            "unet.conv_in.weight",
            "unet.mid.proj.weight"
        ]
    );
    // F16 and BF16 widen exactly; the integer tensor has no weights but its bytes.
    let rows = ctx
        .sql(&format!(
            "SELECT layer, weights, data FROM read_safetensors('{path}') \
             WHERE layer IN ('unet.conv_in.bias', 'text_encoder.position_ids') ORDER BY layer"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let b = &rows[0];
    assert_eq!(b.num_rows(), 2);
    assert!(b.column(1).is_null(0), "I64 has no float view");
    assert_eq!(b.column(2).as_binary::<i32>().value(0).len(), 128);
    let bias = b.column(1).as_list::<i32>().value(1);
    let expected: Vec<f32> = values(8, 2)
        .iter()
        .map(|&x| half::f16::from_f32(x).to_f32())
        .collect();
    assert_eq!(
        bias.as_primitive::<datafusion::arrow::datatypes::Float32Type>()
            .values()
            .to_vec(),
        expected
    );

    // The whole pipeline quantizes; the modality comes from model_index.json.
    let o = arrowquant(
        &["quantize", path, "-o", "q", "-q", "--profile", "edge"],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("model: image (_class_name = \"StableDiffusionPipeline\""),
        "{text}"
    );
    assert!(text.contains("tensors: 6 (4 quantized, 2 kept"), "{text}");
    let o = arrowquant(&["dequantize", "q", "-o", "sd.safetensors"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(dir.join("sd.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("text_encoder.position_ids").unwrap();
    assert_eq!(ids.dtype(), Dtype::I64);
    assert_eq!(
        ids.data(),
        (0..16i64).flat_map(|i| i.to_le_bytes()).collect::<Vec<_>>()
    );
    assert_eq!(st.tensor("unet.conv_in.bias").unwrap().dtype(), Dtype::F16);
    assert_eq!(snapshot(&model), before, "input changed");
}

#[test]
fn configuration_sources_and_errors() {
    let dir = scratch("config");
    let model = bundled_model();
    let m = model.to_str().unwrap();
    std::fs::write(dir.join("bad.yaml"), "bit_width: 4\nbits_per_weight: 2\n").unwrap();
    let o = arrowquant(&["quantize", m, "-o", "o1", "--config", "bad.yaml"], &dir);
    assert_fails_with(&o, "bad.yaml: unknown key 'bits_per_weight'");
    assert!(!dir.join("o1").exists());
    let o = arrowquant(&["quantize", m, "-o", "o1", "--bits", "7"], &dir);
    assert_fails_with(&o, "key 'bit_width': 7 bits is not supported");
    let o = arrowquant(&["quantize", m, "-o", "o1", "--profile", "phone"], &dir);
    assert_fails_with(&o, "unknown profile 'phone'");

    // Environment under YAML under flags.
    std::fs::write(dir.join("c.yaml"), "group_size: 128\n").unwrap();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_arrowquant"));
        cmd.args(["quantize", m, "-o", "o2", "--force", "-q", "--json"])
            .args(extra)
            .current_dir(&dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let w = v["tensors_report"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["layer"] == "mid_block.attentions.0.to_q.weight")
            .unwrap()
            .clone();
        (
            w["bits"].as_u64().unwrap(),
            w["group_size"].as_str().unwrap().to_string(),
        )
    };
    // (Fallback off: at 2 bits the local profile's 0.99 threshold would redo tensors at 4.)
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut env = env.to_vec();
        env.push(("ARROW_QUANT_FALLBACK", "false"));
        run(extra, &env)
    };
    assert_eq!(
        run(&[], &[("ARROW_QUANT_BIT_WIDTH", "2")]),
        (2, "64".into())
    );
    assert_eq!(
        run(&["--config", "c.yaml"], &[("ARROW_QUANT_BIT_WIDTH", "8")]),
        (8, "128".into())
    );
    assert_eq!(
        run(
            &["--config", "c.yaml", "--group-size", "row"],
            &[("ARROW_QUANT_BIT_WIDTH", "8")]
        ),
        (8, "row".into())
    );
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_arrowquant"));
    let o = cmd
        .args(["quantize", m, "-o", "o3"])
        .env("ARROW_QUANT_GROUPSIZE", "64")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_fails_with(&o, "environment: unknown key 'groupsize'");
}

#[tokio::test]
async fn low_quality_tensors_are_redone_wider() {
    let dir = scratch("fallback");
    // Uniform values lose about 3 % of cosine at 2 bits; values on four levels lose nothing.
    let levels: Vec<f32> = (0..64 * 256)
        .map(|i| [-0.75f32, -0.25, 0.25, 0.75][i % 4])
        .collect();
    write_safetensors(
        &dir.join("m/model.safetensors"),
        &[
            Tensor::f32("a.weight", &[64, 256], &values(64 * 256, 8)),
            Tensor::f32("b.weight", &[64, 256], &levels),
        ],
    );
    let o = arrowquant(
        &[
            "quantize",
            "m",
            "-o",
            "q",
            "-q",
            "--profile",
            "edge",
            "--min-cosine",
            "0.98",
            "--json",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["fallbacks"], 1, "{}", stdout(&o));
    let report = v["tensors_report"].as_array().unwrap();
    let a = report.iter().find(|t| t["layer"] == "a.weight").unwrap();
    assert_eq!(a["fallback_from"], "2-bit asym g32", "{a}");
    assert_eq!(a["bits"], 4, "{a}");
    assert!(a["cosine"].as_f64().unwrap() >= 0.98, "{a}");
    let b = report.iter().find(|t| t["layer"] == "b.weight").unwrap();
    assert_eq!(
        (b["bits"].as_u64(), b["cosine"].as_f64()),
        (Some(2), Some(1.0)),
        "{b}"
    );
    // Every row once: the redone tensor's rows replaced, not added.
    let counts = read_parquet(
        &dir.join("q/weights.parquet"),
        "SELECT count(*), count(DISTINCT layer || '/' || CAST(row AS VARCHAR)) FROM t",
    )
    .await;
    let c = counts[0]
        .column(0)
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    let d = counts[0]
        .column(1)
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    assert_eq!((c.value(0), d.value(0)), (128, 128));
    // With --no-fallback the tensor stays at 2 bits and the report shows its cosine.
    let o = arrowquant(
        &[
            "quantize",
            "m",
            "-o",
            "q2",
            "-q",
            "--profile",
            "edge",
            "--min-cosine",
            "0.98",
            "--no-fallback",
            "--json",
        ],
        &dir,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["fallbacks"], 0);
}

/// Writes `bytes` as the model file and checks the CLI refuses it with `needle`, leaving the
/// input untouched and no output.
fn refused(name: &str, bytes: &[u8], needle: &str) {
    let dir = scratch(&format!("bad-{name}"));
    let file = dir.join("model.safetensors");
    std::fs::write(&file, bytes).unwrap();
    let o = arrowquant(&["quantize", "model.safetensors", "-o", "out"], &dir);
    assert_fails_with(&o, needle);
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "input changed");
    assert!(!dir.join("out").exists());
    no_partial_dirs(&dir);
}

fn with_header(header: &str, data_len: usize) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data_len));
    b
}

#[test]
fn bad_safetensors_are_refused_clearly() {
    refused(
        "text",
        b"this is not a model at all, just text",
        "header length",
    );
    refused("short", b"abc", "too short for the 8-byte header length");
    let mut past = 1_000_000u64.to_le_bytes().to_vec();
    past.extend_from_slice(b"{}");
    refused(
        "past-end",
        &past,
        "header length 1000000 runs past the end of the file (10 bytes)",
    );
    refused(
        "json",
        &with_header("{\"a\": {\"dtype\": ", 0),
        "tensor 'a': header entry is not a valid tensor description: EOF while parsing",
    );
    refused(
        "out-of-range",
        &with_header(
            r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
            8,
        ),
        "tensor data does not end where the file ends",
    );
    refused(
        "overlap",
        &with_header(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        ),
        "tensor 'b': data offsets [4, 12] overlap another tensor ('a' ends at 8)",
    );
    refused(
        "size",
        &with_header(
            r#"{"w":{"dtype":"F32","shape":[3,3],"data_offsets":[0,16]}}"#,
            16,
        ),
        "tensor 'w': data offsets span 16 bytes but dtype × shape needs 36",
    );
    refused(
        "dtype",
        &with_header(
            r#"{"w":{"dtype":"F12","shape":[2],"data_offsets":[0,4]}}"#,
            4,
        ),
        "unknown variant `F12`",
    );
}

#[test]
fn missing_and_empty_inputs() {
    let dir = scratch("empty-inputs");
    let o = arrowquant(&["quantize", "nope", "-o", "out"], &dir);
    assert_fails_with(&o, "nope: no such file or directory");
    std::fs::create_dir_all(dir.join("folder")).unwrap();
    std::fs::write(dir.join("folder/readme.txt"), "hi").unwrap();
    let o = arrowquant(&["quantize", "folder", "-o", "out"], &dir);
    assert_fails_with(
        &o,
        "nothing to quantize: no .safetensors file in this folder",
    );
    // Only biases and integers: nothing a quantizer should touch.
    write_safetensors(
        &dir.join("small/model.safetensors"),
        &[
            Tensor::f32("bias", &[4], &[1.0, 2.0, 3.0, 4.0]),
            Tensor::raw("ids", Dtype::I32, &[2, 2], vec![0; 16]),
        ],
    );
    let o = arrowquant(&["quantize", "small", "-o", "out"], &dir);
    assert_fails_with(&o, "nothing to quantize: all 2 tensors are kept");
    assert!(!dir.join("out").exists());
    no_partial_dirs(&dir);
    // Output over the input is refused even with --force.
    let o = arrowquant(&["quantize", "small", "-o", "small", "--force"], &dir);
    assert_fails_with(&o, "would replace the input model");
    assert!(dir.join("small/model.safetensors").is_file());
}

#[test]
fn a_failure_in_a_late_tensor_leaves_nothing() {
    let dir = scratch("late-failure");
    let mut bad = values(32 * 64, 3);
    bad[32 * 64 - 5] = f32::NAN;
    write_safetensors(
        &dir.join("m/model.safetensors"),
        &[
            Tensor::f32("a.weight", &[32, 64], &values(32 * 64, 1)),
            Tensor::f32("b.weight", &[32, 64], &values(32 * 64, 2)),
            Tensor::f32("z.weight", &[32, 64], &bad),
        ],
    );
    let before = snapshot(&dir.join("m"));
    let o = arrowquant(&["quantize", "m", "-o", "out"], &dir);
    assert_fails_with(
        &o,
        "tensor 'z.weight' row 31: non-finite value NaN at index 59",
    );
    assert!(!dir.join("out").exists());
    no_partial_dirs(&dir);
    assert_eq!(snapshot(&dir.join("m")), before);
}

#[test]
fn interrupted_run_leaves_nothing() {
    let dir = scratch("interrupted");
    // Large enough that a debug build takes a while: 48 tensors of 512 × 1024.
    let tensors: Vec<Tensor> = (0..48)
        .map(|i| {
            Tensor::f32(
                &format!("l{i:02}.weight"),
                &[512, 1024],
                &values(512 * 1024, i),
            )
        })
        .collect();
    write_safetensors(&dir.join("m/model.safetensors"), &tensors);
    let before = snapshot(&dir.join("m"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_arrowquant"))
        .args(["quantize", "m", "-o", "out", "-q"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the partial directory to appear, then interrupt.
    let started = std::time::Instant::now();
    let mut seen = false;
    while started.elapsed() < std::time::Duration::from_secs(60) {
        seen = std::fs::read_dir(&dir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".partial-")
        });
        if seen || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(seen, "the run never started writing");
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    if out.status.code() == Some(0) {
        // Finished before the signal landed: then the output must be complete.
        assert!(dir.join("out/manifest.json").is_file());
    } else {
        assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
        assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
        assert!(!dir.join("out").exists());
    }
    no_partial_dirs(&dir);
    assert_eq!(snapshot(&dir.join("m")), before);
}

#[tokio::test]
async fn layer_filters_reach_the_scan() {
    let ctx = arrowquant::session::context();
    let model = bundled_model();
    let sql = format!(
        "EXPLAIN SELECT row FROM read_safetensors('{}') WHERE layer = 'conv_in.weight'",
        model.display()
    );
    let plan = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    assert!(
        text.contains("partial_filters=[read_safetensors().layer = Utf8(\"conv_in.weight\")]"),
        "{text}"
    );
    // One tensor of 32 rows is read: a single batch.
    assert!(
        text.contains("StreamingTableExec: partition_sizes=1"),
        "{text}"
    );
}

#[test]
fn rows_over_two_gib_are_refused() {
    // A sparse file: one F32 tensor of shape [1, 600 000 000] (2.4 GB of zeros on no disk).
    let dir = scratch("huge-row");
    let header = r#"{"w":{"dtype":"F32","shape":[1,600000000],"data_offsets":[0,2400000000]}}"#;
    let path = dir.join("huge.safetensors");
    let mut f = std::fs::File::create(&path).unwrap();
    use std::io::Write;
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.set_len(8 + header.len() as u64 + 2_400_000_000).unwrap();
    drop(f);
    let o = arrowquant(&["quantize", "huge.safetensors", "-o", "out"], &dir);
    assert_fails_with(
        &o,
        "tensor 'w' (shape [1, 600000000]): rows of 600000000 values are over the 2 GiB",
    );
    assert!(!dir.join("out").exists());
    std::fs::remove_file(&path).unwrap();
}

/// A small model of two 4-bit-friendly tensors, for runs that test the configuration.
fn small_model(dir: &Path) -> String {
    write_safetensors(
        &dir.join("m/model.safetensors"),
        &[
            Tensor::f32("a.weight", &[32, 64], &values(32 * 64, 1)),
            Tensor::f32("b.weight", &[32, 64], &values(32 * 64, 2)),
        ],
    );
    "m".to_string()
}

fn manifest_of(dir: &Path, out: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(out).join("manifest.json")).unwrap())
        .unwrap()
}

/// `--scheme q4_0` with a group size the user set is refused as SQL refuses it, from flags,
/// environment and YAML; with the profile's default group size it takes the block size, and the
/// manifest records what was used.
#[test]
fn gguf_scheme_and_group_size_agree_everywhere() {
    let dir = scratch("gguf-group");
    let m = small_model(&dir);
    let expected = "key 'group_size': scheme q4_0 uses blocks of 32 values, but group size 64 \
                    was asked for";
    let o = arrowquant(
        &[
            "quantize",
            &m,
            "-o",
            "o",
            "--scheme",
            "q4_0",
            "--group-size",
            "64",
        ],
        &dir,
    );
    assert_fails_with(&o, &format!("command line: {expected}"));
    let o = command(&["quantize", &m, "-o", "o", "--scheme", "q4_0"], &dir)
        .env("ARROW_QUANT_GROUP_SIZE", "64")
        .output()
        .unwrap();
    assert_fails_with(&o, &format!("environment: {expected}"));
    std::fs::write(dir.join("c.yaml"), "scheme: q4_0\ngroup_size: 64\n").unwrap();
    let o = arrowquant(&["quantize", &m, "-o", "o", "--config", "c.yaml"], &dir);
    assert_fails_with(&o, &format!("c.yaml: {expected}"));
    assert!(!dir.join("o").exists());
    no_partial_dirs(&dir);
    // SQL refuses the same combination.
    let o = arrowquant(
        &[
            "sql",
            "-q",
            "-c",
            "SELECT quantize([1.0, 2.0], 4, 64, 'q4_0')",
        ],
        &dir,
    );
    assert_fails_with(&o, "uses blocks of 32 values, but group size 64");

    // Defaulted: the block size is used and recorded, whichever profile, from flags or env.
    for (out, extra, env) in [
        ("d1", vec!["--scheme", "q4_0"], None),
        ("d2", vec!["--profile", "cloud", "--scheme", "q4_0"], None),
        ("d3", vec![], Some(("ARROW_QUANT_SCHEME", "q4_0"))),
    ] {
        let mut cmd = command(&["quantize", &m, "-o", out, "-q"], &dir);
        cmd.args(&extra);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{out}: {}", stderr(&o));
        let manifest = manifest_of(&dir, out);
        assert_eq!(manifest["config"]["scheme"], "q4_0", "{out}");
        assert_eq!(manifest["config"]["group_size"], "32", "{out}");
        assert_eq!(manifest["config"]["bit_width"], 4, "{out}");
    }
    // Explicit and agreeing is fine.
    let o = arrowquant(
        &[
            "quantize",
            &m,
            "-o",
            "e",
            "-q",
            "--scheme",
            "q8_0",
            "--group-size",
            "32",
            "--bits",
            "8",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(manifest_of(&dir, "e")["config"]["group_size"], "32");
}

/// Variables that are not UTF-8: someone else's is ignored, one of ours is named.
#[cfg(unix)]
#[test]
fn environment_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let dir = scratch("env-not-utf8");
    let m = small_model(&dir);
    let raw = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
    let o = command(&["quantize", &m, "-o", "o", "-q"], &dir)
        .env(raw(b"SOME_TOOL_SETTING"), raw(b"caf\xe9"))
        .env(raw(b"LATIN1_\xe9"), "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = command(&["quantize", &m, "-o", "o2", "-q"], &dir)
        .env("ARROW_QUANT_SCHEME", raw(b"q4\xff0"))
        .output()
        .unwrap();
    assert_fails_with(
        &o,
        "environment: key 'scheme': the value of ARROW_QUANT_SCHEME is not valid UTF-8",
    );
    assert!(!dir.join("o2").exists());
}

/// A tensor whose values no f16 scale can hold is kept, with the reason, and the run goes on.
#[test]
fn tensors_beyond_f16_range_are_kept() {
    let dir = scratch("beyond-f16");
    let mut big = values(32 * 64, 3);
    big[5 * 64 + 7] = 3.0e6;
    big[9 * 64] = -1.0e6;
    let mut also = values(32 * 64, 4);
    also[0] = -2.0e6;
    write_safetensors(
        &dir.join("m/model.safetensors"),
        &[
            Tensor::f32("a.weight", &[32, 64], &values(32 * 64, 1)),
            Tensor::f32("big.weight", &[32, 64], &big),
            Tensor::f32("c.weight", &[32, 64], &values(32 * 64, 2)),
            Tensor::f32("huge.weight", &[32, 64], &also),
        ],
    );
    let o = arrowquant(&["quantize", "m", "-o", "out", "-q", "--json"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["quantized"].as_u64(), v["kept"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    let report = v["tensors_report"].as_array().unwrap();
    let row = |name: &str| report.iter().find(|t| t["layer"] == name).unwrap();
    for (name, max) in [("big.weight", "3e6"), ("huge.weight", "2e6")] {
        let t = row(name);
        assert_eq!(t["action"], "keep", "{t}");
        let why = t["reason"].as_str().unwrap();
        assert!(
            why.starts_with(&format!("values beyond f16 range: max |x| = {max} (row ")),
            "{why}"
        );
        assert!(why.contains("beyond the range of f16"), "{why}");
    }
    assert_eq!(row("a.weight")["action"], "quantize");
    assert_eq!(row("c.weight")["action"], "quantize");
    // The kept tensors round-trip exactly; the file holds every row once.
    let o = arrowquant(&["dequantize", "out", "-o", "back.safetensors"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let back = std::fs::read(dir.join("back.safetensors")).unwrap();
    let back = SafeTensors::deserialize(&back).unwrap();
    let t = back.tensor("big.weight").unwrap();
    let restored: Vec<f32> = t
        .data()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(restored, big);
}

/// The reason names the tensor's largest magnitude even when it lies in a row that quantizes:
/// row 0 peaks at 1e5 with a minimum near 0 (scale 1e5/15 fits f16), row 3 is a constant
/// -7e4 (its offset does not).
#[test]
fn the_reason_names_the_whole_tensors_largest_value() {
    let dir = scratch("beyond-f16-max");
    let mut mixed = values(32 * 64, 5);
    mixed[0] = 1.0e5;
    for v in &mut mixed[3 * 64..4 * 64] {
        *v = -7.0e4;
    }
    write_safetensors(
        &dir.join("m/model.safetensors"),
        &[
            Tensor::f32("a.weight", &[32, 64], &values(32 * 64, 1)),
            Tensor::f32("mixed.weight", &[32, 64], &mixed),
        ],
    );
    let o = arrowquant(&["quantize", "m", "-o", "out", "-q", "--json"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let report = v["tensors_report"].as_array().unwrap();
    let t = report
        .iter()
        .find(|t| t["layer"] == "mixed.weight")
        .unwrap();
    assert_eq!(t["action"], "keep", "{t}");
    let why = t["reason"].as_str().unwrap();
    assert!(
        why.starts_with("values beyond f16 range: max |x| = 1e5 (row 3: "),
        "{why}"
    );
}

fn header_file(dir: &Path, name: &str, header: &str, data_len: usize) -> String {
    std::fs::write(dir.join(name), with_header(header, data_len)).unwrap();
    name.to_string()
}

/// Headers that are hostile rather than broken: each refused with the tensor named, in memory
/// that does not grow with the JSON's nesting.
#[test]
fn hostile_headers_are_refused_clearly() {
    let dir = scratch("hostile-headers");
    let inspect = |file: &str| arrowquant(&["inspect", "--header-only", file], &dir);
    let w = r#""w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}"#;
    let rank: String = std::iter::repeat_n("1", 65).collect::<Vec<_>>().join(",");
    let f = header_file(
        &dir,
        "rank.safetensors",
        &format!(r#"{{"w":{{"dtype":"F32","shape":[{rank}],"data_offsets":[0,4]}}}}"#),
        4,
    );
    assert_fails_with(
        &inspect(&f),
        "tensor 'w': header entry is not a valid tensor description: shape has more than 64 dimensions",
    );
    let f = header_file(&dir, "twice.safetensors", &format!("{{{w},{w}}}"), 16);
    assert_fails_with(&inspect(&f), "tensor 'w': appears twice in the header");
    let f = header_file(
        &dir,
        "meta.safetensors",
        &format!(r#"{{"__metadata__":{{"format":["pt"]}},{w}}}"#),
        16,
    );
    assert_fails_with(
        &inspect(&f),
        "header is not a valid tensor table: invalid type: sequence, expected a string",
    );
    // Nesting far past serde_json's recursion limit, in the metadata and in an unknown field.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let f = header_file(
        &dir,
        "deep-meta.safetensors",
        &format!(r#"{{"__metadata__":{{"a":{deep}}},{w}}}"#),
        16,
    );
    assert_fails_with(&inspect(&f), "header is not a valid tensor table");
    let f = header_file(
        &dir,
        "deep-field.safetensors",
        &format!(r#"{{"w":{{"dtype":"F32","shape":[2,2],"data_offsets":[0,16],"x":{deep}}}}}"#),
        16,
    );
    // Unknown fields are skipped (iteratively), as the format allows.
    let o = inspect(&f);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = header_file(&dir, "list.safetensors", "[1, 2]", 0);
    assert_fails_with(
        &inspect(&f),
        "header is not a valid tensor table: invalid type: sequence, expected a JSON object",
    );
    let f = header_file(
        &dir,
        "gap.safetensors",
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        8,
    );
    assert_fails_with(
        &inspect(&f),
        "tensor 'a': data offsets [4, 8] leave a gap after byte 0",
    );
    let f = header_file(
        &dir,
        "backwards.safetensors",
        r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#,
        8,
    );
    assert_fails_with(
        &inspect(&f),
        "tensor 'a': data offsets [8, 0] end before they start",
    );
    let f = header_file(
        &dir,
        "overflow.safetensors",
        r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#,
        0,
    );
    assert_fails_with(
        &inspect(&f),
        "tensor 'a': shape [4294967296, 4294967296] overflows",
    );
    let f = header_file(&dir, "trailing.safetensors", &format!("{{{w}}} x"), 16);
    assert_fails_with(
        &inspect(&f),
        "header is not a valid tensor table: trailing characters",
    );
    // Padding with spaces, as the safetensors writer aligns headers, is fine.
    let f = header_file(&dir, "padded.safetensors", &format!("{{{w}}}      "), 16);
    let o = inspect(&f);
    assert!(o.status.success(), "{}", stderr(&o));
}
