//! `arrowquant export DIR -o OUT.gguf` run as the real binary on output directories that
//! `arrowquant quantize` wrote: every quantized tensor's bytes are the directory's codes, kept
//! tensors are their stored bytes (1-D floats widened to F32), names, types, dimensions and
//! metadata are what llama.cpp expects; and the refusals (affine schemes, a directory that is
//! not an output, rows missing or twice, an existing OUT, a run failing or stopped part-way)
//! leave no file behind and the directory as it was.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use arrowquant::model::gguf_file::{GgufFile, Value};
use common::*;
use common::{meta_text as text, meta_value as value};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float32Type, Int64Type};
use safetensors::tensor::Dtype;

const LLAMA: &str = "tests/data/gguf/llama-f32.gguf";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small llama-like checkpoint: 256-value rows (whole blocks of every GGUF format), a
/// 96-value row (a q4_K shape fallback to q5_0), F16 weights, a 1-D F16 norm (widened to F32)
/// and an integer tensor.
fn model(path: &Path) {
    let f16 = |shape: &[usize], seed: u64| {
        let n: usize = shape.iter().product();
        values(n, seed)
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let tensors = vec![
        Tensor::f32("token_embd.weight", &[16, 256], &values(16 * 256, 1)),
        Tensor::f32("blk.0.attn_norm.weight", &[256], &values(256, 2)),
        Tensor::f32("blk.0.attn_q.weight", &[32, 256], &values(32 * 256, 3)),
        Tensor::raw(
            "blk.0.ffn_down.weight",
            Dtype::F16,
            &[8, 512],
            f16(&[8, 512], 4),
        ),
        Tensor::f32("blk.0.odd.weight", &[4, 96], &values(4 * 96, 5)),
        Tensor::raw(
            "blk.0.ids",
            Dtype::I32,
            &[4],
            (0..4i32).flat_map(|i| i.to_le_bytes()).collect(),
        ),
        Tensor::raw("output_norm.weight", Dtype::F16, &[256], f16(&[256], 6)),
    ];
    write_safetensors(path, &tensors);
}

fn run(args: &[&str], cwd: &Path) -> std::process::Output {
    arrowquant(args, cwd)
}

fn ok(args: &[&str], cwd: &Path) -> std::process::Output {
    let o = run(args, cwd);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    o
}

/// Quantizes the test model in `dir` into `dir/NAME` with `scheme`.
fn quantized(dir: &Path, name: &str, scheme: &str) -> PathBuf {
    if !dir.join("m/model.safetensors").exists() {
        model(&dir.join("m/model.safetensors"));
    }
    ok(
        &["quantize", "-q", "m", "-o", name, "--scheme", scheme],
        dir,
    );
    dir.join(name)
}

fn export(dir: &Path, out: &str, cwd: &Path) -> std::process::Output {
    run(&["export", dir.to_str().unwrap(), "-o", out], cwd)
}

/// Names in `dir` besides `keep`: no partial may remain.
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    names.sort();
    names
}

async fn query(sql: &str) -> Vec<RecordBatch> {
    let ctx = arrowquant::session::context().enable_url_table();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

fn int(batches: &[RecordBatch], column: &str) -> i64 {
    batches[0]
        .column_by_name(column)
        .unwrap()
        .as_primitive::<Int64Type>()
        .value(0)
}

#[tokio::test]
async fn every_quantized_tensor_is_the_directorys_codes() {
    let dir = scratch("export-codes");
    for (scheme, ty, file_type) in [("q8_0", "Q8_0", 7), ("q4_K", "Q4_K", 14)] {
        let out_dir = quantized(&dir, scheme, scheme);
        let before = snapshot(&out_dir);
        let name = format!("{scheme}.gguf");
        let o = export(&out_dir, &name, &dir);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains(&format!("wrote {name} (7 tensors")),
            "{}",
            stdout(&o)
        );
        assert_eq!(snapshot(&out_dir), before, "the directory changed");
        let out = dir.join(&name);
        let file = GgufFile::open(&out).unwrap();

        // Names in the model's order, dims innermost first, the types the codes are in.
        let q4k_odd = if scheme == "q4_K" { "Q5_0" } else { "Q8_0" };
        let expected = [
            ("token_embd.weight", ty, vec![256, 16]),
            ("blk.0.attn_norm.weight", "F32", vec![256]),
            ("blk.0.attn_q.weight", ty, vec![256, 32]),
            ("blk.0.ffn_down.weight", ty, vec![512, 8]),
            ("blk.0.odd.weight", q4k_odd, vec![96, 4]),
            ("blk.0.ids", "I32", vec![4]),
            ("output_norm.weight", "F32", vec![256]),
        ];
        let got: Vec<(&str, &str, Vec<u64>)> = file
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t.ggml_type.name, t.dims.clone()))
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        let mut expected: Vec<(&str, &str, Vec<u64>)> = expected.into_iter().collect();
        expected.sort();
        assert_eq!(sorted, expected, "{scheme}");
        // In the model's order, as report.parquet lists it.
        let report = query(&format!(
            "SELECT layer FROM '{}'",
            out_dir.join("report.parquet").display()
        ))
        .await;
        let mut order = Vec::new();
        for b in &report {
            let column = datafusion::arrow::compute::cast(
                b.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            order.extend(
                column
                    .as_string::<i32>()
                    .iter()
                    .map(|l| l.unwrap().to_string()),
            );
        }
        let names: Vec<String> = got.iter().map(|t| t.0.to_string()).collect();
        assert_eq!(names, order, "{scheme}");

        // Metadata: a name (the source is no GGUF file), no architecture, the file type and
        // provenance as quantize -o OUT.gguf writes them.
        assert_eq!(text(&file, "general.name"), "m");
        assert!(value(&file, "general.architecture").is_none());
        assert_eq!(
            value(&file, "general.file_type"),
            Some(Value::UInt(file_type))
        );
        assert_eq!(
            value(&file, "general.quantization_version"),
            Some(Value::UInt(2))
        );
        assert_eq!(text(&file, "quantize.tool"), "arrowquant");
        assert_eq!(text(&file, "quantize.version"), env!("CARGO_PKG_VERSION"));
        assert_eq!(text(&file, "quantize.scheme"), scheme);
        assert_eq!(value(&file, "quantize.pure"), Some(Value::Bool(false)));
        let mixture = text(&file, "quantize.mixture");
        if scheme == "q4_K" {
            assert!(mixture.contains("blk.0.odd.weight=Q5_0"), "{mixture}");
            // The report says which format the rows took, llama.cpp's fallback.
            assert!(
                mixture.contains("rows of 96 values are not whole q4_K blocks: q5_0"),
                "{mixture}"
            );
        } else {
            assert!(!mixture.contains("blk.0.odd.weight"), "{mixture}");
        }

        // Every quantized row's bytes are its codes, and decode as dequantize does.
        let weights = out_dir.join("weights.parquet");
        let sums = query(&format!(
            "SELECT count(*) AS n,
                    count(*) FILTER (WHERE o.data = w.q['codes']) AS same_codes,
                    count(*) FILTER (WHERE o.weights = dequantize(w.q)) AS same_values
             FROM read_gguf('{}') o JOIN '{}' w ON o.layer = w.layer AND o.row = w.row
             WHERE w.q IS NOT NULL",
            out.display(),
            weights.display()
        ))
        .await;
        // 16 + 32 + 8 + 4 rows.
        assert_eq!(int(&sums, "n"), 60, "{scheme}");
        assert_eq!(int(&sums, "same_codes"), 60, "{scheme}: codes differ");
        assert_eq!(int(&sums, "same_values"), 60, "{scheme}: values differ");
        // Kept tensors: F32 and I32 byte for byte, the F16 norm widened exactly.
        let kept = query(&format!(
            "SELECT count(*) AS n FROM read_gguf('{}') o JOIN '{}' w
             ON o.layer = w.layer AND o.row = w.row
             WHERE w.q IS NULL AND o.data = w.data",
            out.display(),
            weights.display()
        ))
        .await;
        assert_eq!(int(&kept, "n"), 2, "attn_norm and ids as stored");
        let norm = query(&format!(
            "SELECT o.weights AS o FROM read_gguf('{}') o WHERE o.layer = 'output_norm.weight'",
            out.display()
        ))
        .await;
        let list = norm[0].column(0).as_list::<i32>();
        let got = list
            .values()
            .as_primitive::<Float32Type>()
            .values()
            .to_vec();
        let want: Vec<f32> = values(256, 6)
            .iter()
            .map(|v| half::f16::from_f32(*v).to_f32())
            .collect();
        assert_eq!(got, want);
    }
    assert_eq!(
        others(&dir, &["m", "q8_0", "q4_K", "q8_0.gguf", "q4_K.gguf"]),
        Vec::<String>::new()
    );
}

/// A manifest whose source is a GGUF file that still exists: its metadata is carried as
/// `quantize -o OUT.gguf` carries it (alignment included), the file type and provenance set.
#[test]
fn a_gguf_sources_metadata_is_carried() {
    let dir = scratch("export-carried");
    let out_dir = quantized(&dir, "q8", "q8_0");
    let manifest_path = out_dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["source"] = serde_json::Value::String(root().join(LLAMA).display().to_string());
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let o = export(&out_dir, "out.gguf", &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("metadata: carried from"),
        "{}",
        stdout(&o)
    );
    let (a, b) = (
        GgufFile::open(&root().join(LLAMA)).unwrap(),
        GgufFile::open(&dir.join("out.gguf")).unwrap(),
    );
    for e in &a.header().metadata {
        if e.key == "general.file_type" {
            continue;
        }
        let f = b.header().metadata.iter().find(|f| f.key == e.key);
        let f = f.unwrap_or_else(|| panic!("{} was not carried", e.key));
        assert_eq!(a.text(e), b.text(f), "{}", e.key);
    }
    assert_eq!(text(&b, "general.architecture"), "llama");
    assert_eq!(value(&b, "general.file_type"), Some(Value::UInt(7)));
    assert_eq!(b.header().alignment, 64, "general.alignment carried");
    assert_eq!(text(&b, "quantize.scheme"), "q8_0");
    // The source vanished: a name only.
    manifest["source"] = serde_json::Value::String(dir.join("gone.gguf").display().to_string());
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    ok(
        &["export", out_dir.to_str().unwrap(), "-o", "named.gguf"],
        &dir,
    );
    let c = GgufFile::open(&dir.join("named.gguf")).unwrap();
    assert_eq!(text(&c, "general.name"), "gone");
    assert!(value(&c, "general.architecture").is_none());
}

#[test]
fn affine_tensors_are_refused_by_name_before_anything_is_written() {
    let dir = scratch("export-affine");
    let asym = quantized(&dir, "asym", "asym");
    let before = snapshot(&asym);
    let o = export(&asym, "out.gguf", &dir);
    assert_fails_with(&o, "cannot be exported as GGUF, nothing was written");
    let e = stderr(&o);
    assert!(
        e.contains("GGUF has no type for the affine scheme of 4 tensors"),
        "{e}"
    );
    for name in [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.0.ffn_down.weight",
        "blk.0.odd.weight",
    ] {
        assert!(e.contains(&format!("'{name}' (asym)")), "{name}: {e}");
    }
    assert!(!e.contains("attn_norm"), "{e}");
    assert!(e.contains("--scheme q4_K"), "{e}");
    assert_eq!(snapshot(&asym), before);
    assert_eq!(others(&dir, &["m", "asym"]), Vec::<String>::new());

    // A GGUF run whose shape fallback was affine (the bundled UNet's conv_in, 27-value rows,
    // no q8_0 block), and convolutions whose GGUF rows (3 values) no block divides.
    ok(&["quantize", "-q", "--scheme", "q8_0", "-o", "unet"], &dir);
    let o = export(&dir.join("unet"), "unet.gguf", &dir);
    assert_fails_with(&o, "'conv_in.weight' (asym)");
    let e = stderr(&o);
    assert!(
        e.contains("'conv_out.weight' (Q8_0 blocks of 32, innermost dimension 3)"),
        "{e}"
    );
    assert!(e.contains("-o OUT.gguf --scheme q8_0"), "{e}");
    assert_eq!(others(&dir, &["m", "asym", "unet"]), Vec::<String>::new());
}

#[test]
fn a_directory_that_is_not_an_output_is_refused_naming_the_file() {
    let dir = scratch("export-not-output");
    let good = quantized(&dir, "good", "q8_0");
    let copy = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["manifest.json", "weights.parquet", "report.parquet"] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    let o = export(&dir.join("missing"), "o.gguf", &dir);
    assert_fails_with(
        &o,
        "missing: not an arrowquant output directory (no such directory)",
    );
    let d = copy("no-manifest");
    std::fs::remove_file(d.join("manifest.json")).unwrap();
    assert_fails_with(
        &export(&d, "o.gguf", &dir),
        "not an arrowquant output directory (no manifest.json)",
    );
    let d = copy("no-weights");
    std::fs::remove_file(d.join("weights.parquet")).unwrap();
    assert_fails_with(
        &export(&d, "o.gguf", &dir),
        "not an arrowquant output directory (no weights.parquet)",
    );
    let d = copy("bad-json");
    std::fs::write(d.join("manifest.json"), "{ not json").unwrap();
    assert_fails_with(
        &export(&d, "o.gguf", &dir),
        "bad-json/manifest.json: not valid JSON",
    );
    let d = copy("other-json");
    std::fs::write(d.join("manifest.json"), r#"{"format": "something-else"}"#).unwrap();
    assert_fails_with(
        &export(&d, "o.gguf", &dir),
        "other-json/manifest.json: not an arrowquant manifest",
    );
    let d = copy("bad-parquet");
    std::fs::write(d.join("weights.parquet"), "not parquet at all").unwrap();
    let o = export(&d, "o.gguf", &dir);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("weights.parquet"), "{}", stderr(&o));
    // A file given as the directory.
    assert_fails_with(
        &export(&good.join("manifest.json"), "o.gguf", &dir),
        "not an arrowquant output directory (not a directory)",
    );
    assert!(!dir.join("o.gguf").exists());
    assert!(
        others(&dir, &[]).iter().all(|n| !n.contains(".partial-")),
        "{:?}",
        others(&dir, &[])
    );
}

/// weights.parquet rewritten with SQL (`COPY`) as a damaged output would hold it.
async fn rewritten(good: &Path, into: &Path, select: &str) {
    std::fs::create_dir_all(into).unwrap();
    for f in ["manifest.json", "report.parquet"] {
        std::fs::copy(good.join(f), into.join(f)).unwrap();
    }
    let ctx = arrowquant::session::context();
    ctx.register_parquet(
        "w",
        good.join("weights.parquet").to_str().unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    let sql = format!(
        "COPY ({select}) TO '{}' STORED AS PARQUET",
        into.join("weights.parquet").display()
    );
    ctx.sql(&sql).await.unwrap().collect().await.unwrap();
}

#[tokio::test]
async fn rows_missing_or_twice_are_refused_naming_tensor_and_row() {
    let dir = scratch("export-rows");
    let good = quantized(&dir, "good", "q8_0");
    let missing = dir.join("missing");
    rewritten(
        &good,
        &missing,
        "SELECT * FROM w WHERE NOT (layer = 'blk.0.attn_q.weight' AND row = 5)",
    )
    .await;
    assert_fails_with(
        &export(&missing, "o.gguf", &dir),
        "tensor 'blk.0.attn_q.weight': row 5 of its 32 rows is missing from weights.parquet",
    );
    let twice = dir.join("twice");
    rewritten(
        &good,
        &twice,
        "SELECT * FROM w UNION ALL SELECT * FROM w WHERE layer = 'token_embd.weight' AND row = 7",
    )
    .await;
    assert_fails_with(
        &export(&twice, "o.gguf", &dir),
        "tensor 'token_embd.weight': row 7 appears more than once in weights.parquet",
    );
    let outside = dir.join("outside");
    rewritten(
        &good,
        &outside,
        "SELECT layer, CASE WHEN layer = 'blk.0.odd.weight' AND row = 3 THEN 9 ELSE row END AS row,
                shape, dtype, q, data FROM w",
    )
    .await;
    assert_fails_with(
        &export(&outside, "o.gguf", &dir),
        "tensor 'blk.0.odd.weight' row 9: outside its 4 rows",
    );
    assert!(!dir.join("o.gguf").exists());
    assert_eq!(
        others(&dir, &["m", "good", "missing", "twice", "outside"]),
        Vec::<String>::new()
    );
}

/// A row whose stored bytes are short, in the last tensor: the export fails on it after the
/// others were written, and leaves neither OUT nor a partial file.
#[tokio::test]
async fn an_export_failing_part_way_leaves_nothing() {
    let dir = scratch("export-fail");
    let good = quantized(&dir, "good", "q8_0");
    let short = dir.join("short");
    rewritten(
        &good,
        &short,
        "SELECT layer, row, shape, dtype, q,
                CASE WHEN layer = 'output_norm.weight' THEN X'0000' ELSE data END AS data
         FROM w",
    )
    .await;
    let o = export(&short, "o.gguf", &dir);
    assert_fails_with(&o, "tensor 'output_norm.weight' row 0");
    assert!(!dir.join("o.gguf").exists());
    assert_eq!(others(&dir, &["m", "good", "short"]), Vec::<String>::new());
}

#[test]
fn an_existing_out_is_refused_without_force() {
    let dir = scratch("export-exists");
    let good = quantized(&dir, "good", "q8_0");
    std::fs::write(dir.join("out.gguf"), "not mine").unwrap();
    let o = export(&good, "out.gguf", &dir);
    assert_fails_with(
        &o,
        "output out.gguf already exists (use --force to replace it)",
    );
    assert_eq!(std::fs::read(dir.join("out.gguf")).unwrap(), b"not mine");
    ok(&["export", "good", "-o", "out.gguf", "--force"], &dir);
    assert!(GgufFile::open(&dir.join("out.gguf")).is_ok());
    // Never over the directory or a file in it, even with --force.
    let o = run(
        &["export", "good", "-o", "good/weights.parquet", "--force"],
        &dir,
    );
    assert_fails_with(&o, "would replace the input quantized model");
    let o = run(&["export", "good", "-o", "good", "--force"], &dir);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(good.join("weights.parquet").is_file());
    assert_eq!(
        others(&dir, &["m", "good", "out.gguf"]),
        Vec::<String>::new()
    );
}

/// A signal during the export removes the partial file: the run ends with 128 + the signal's
/// number (or had already finished).
#[test]
fn a_stopped_export_leaves_no_partial() {
    let dir = scratch("export-signal");
    let tensors: Vec<Tensor> = (0..16)
        .map(|i| {
            Tensor::f32(
                &format!("blk.{i}.attn_q.weight"),
                &[512, 1024],
                &values(512 * 1024, i),
            )
        })
        .collect();
    write_safetensors(&dir.join("big/model.safetensors"), &tensors);
    ok(
        &["quantize", "-q", "big", "-o", "big-q8", "--scheme", "q8_0"],
        &dir,
    );
    let partials = |d: &Path| {
        others(d, &[])
            .into_iter()
            .filter(|n| n.contains(".partial-"))
            .count()
    };
    let mut stopped = 0;
    for (signal, number) in [("TERM", 15), ("INT", 2), ("HUP", 1)] {
        let child = command(&["export", "big-q8", "-o", "big.gguf"], &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while partials(&dir) == 0 && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        if out.status.code() == Some(0) {
            std::fs::remove_file(dir.join("big.gguf")).unwrap();
        } else {
            stopped += 1;
            assert_eq!(out.status.code(), Some(128 + number), "{}", stderr(&out));
            assert!(!dir.join("big.gguf").exists());
        }
        assert_eq!(partials(&dir), 0, "{:?}", others(&dir, &[]));
    }
    assert!(stopped > 0, "every export finished before its signal");
}
