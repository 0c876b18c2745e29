//! Bit allocation and overrides of a GGUF output, run as the real binary: `--max-size`,
//! `--target-bpw`, `--candidates`, `--tensor-type`, and their refusals.

mod common;

use std::path::PathBuf;

use arrowquant::model::gguf_file::GgufFile;
use common::*;

const LLAMA: &str = "tests/data/gguf/llama-f32.gguf";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> std::process::Output {
    let mut all = vec!["quantize", "-q", LLAMA];
    all.extend_from_slice(args);
    arrowquant(&all, &root())
}

fn ok(args: &[&str]) -> std::process::Output {
    let out = run(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

fn tensor_bytes(path: &std::path::Path) -> u64 {
    let f = GgufFile::open(path).unwrap();
    f.tensors().iter().map(|t| t.len as u64).sum()
}

fn type_of(path: &std::path::Path, name: &str) -> String {
    let f = GgufFile::open(path).unwrap();
    f.tensors()
        .iter()
        .find(|t| t.name == name)
        .unwrap()
        .ggml_type
        .name
        .to_string()
}

/// The smallest and largest tensor data the default candidates reach, from the error message
/// of a budget of one byte.
fn range() -> (u64, u64) {
    let out = run(&[
        "-o",
        "/tmp/arrowquant-allocation-range.gguf",
        "--max-size",
        "1",
    ]);
    let err = stderr(&out);
    let bytes: Vec<u64> = err
        .split("reach ")
        .nth(1)
        .unwrap_or_else(|| panic!("{err}"))
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (bytes[0], bytes[1])
}

#[test]
fn the_output_fits_the_budget_and_more_room_gives_less_error() {
    let dir = scratch("gguf-allocation-budget");
    let (low, high) = range();
    assert!(low < high, "{low} {high}");
    let mut last_error = f64::INFINITY;
    for (i, budget) in [low, (low + high) / 2, high].into_iter().enumerate() {
        let out = dir.join(format!("b{i}.gguf"));
        let o = ok(&[
            "-o",
            out.to_str().unwrap(),
            "--max-size",
            &budget.to_string(),
            "--json",
        ]);
        let summary = json(&o);
        let a = &summary["allocation"];
        let written = tensor_bytes(&out);
        assert!(
            written <= budget,
            "{written} bytes over the budget {budget}"
        );
        assert_eq!(a["tensor_bytes"].as_u64(), Some(written));
        let error = a["error"].as_f64().unwrap();
        assert!(error <= last_error, "{error} after {last_error}");
        assert!(a["lower_bound"].as_f64().unwrap() <= error * (1.0 + 1e-12));
        last_error = error;
        // Every allocated tensor says what it got and what the next step would cost.
        let reasons: Vec<&str> = summary["tensors_report"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["reason"].as_str())
            .filter(|r| r.starts_with("allocated: "))
            .collect();
        assert_eq!(reasons.len() as u64, a["allocated"].as_u64().unwrap());
        if i == 0 {
            assert!(
                reasons.iter().any(|r| r.contains("one step up")),
                "{reasons:?}"
            );
        }
    }
    // The largest budget takes every tensor's least-error format.
    assert_eq!(type_of(&dir.join("b2.gguf"), "blk.0.attn_q.weight"), "Q8_0");
    assert_eq!(type_of(&dir.join("b0.gguf"), "blk.0.attn_q.weight"), "Q2_K");
}

#[test]
fn target_bpw_is_the_budget_it_makes_and_candidates_limit_the_formats() {
    let dir = scratch("gguf-allocation-bpw");
    let out = dir.join("bpw.gguf");
    let o = ok(&[
        "-o",
        out.to_str().unwrap(),
        "--target-bpw",
        "7.5",
        "--candidates",
        "q4_K,q8_0",
        "--json",
    ]);
    let a = &json(&o)["allocation"];
    assert_eq!(a["target_bpw"].as_f64(), Some(7.5));
    assert!(a["bits_per_weight"].as_f64().unwrap() <= 7.5);
    assert_eq!(a["candidates"], serde_json::json!(["q4_K", "q8_0"]));
    let f = GgufFile::open(&out).unwrap();
    for t in f.tensors() {
        assert!(
            ["F32", "F16", "Q8_0", "Q4_K", "Q5_0"].contains(&t.ggml_type.name),
            "{} is {}",
            t.name,
            t.ggml_type.name
        );
    }
}

#[test]
fn budgets_outside_the_range_are_refused_with_the_range() {
    let (low, high) = range();
    let below = run(&["-o", "/tmp/x.gguf", "--max-size", &(low - 1).to_string()]);
    assert_fails_with(&below, "is below the smallest mixture");
    assert_fails_with(&below, &format!("reach {low} to {high} bytes"));
    let above = run(&["-o", "/tmp/x.gguf", "--max-size", &(high + 1).to_string()]);
    assert_fails_with(&above, "is above the largest mixture");
    let bpw = run(&["-o", "/tmp/x.gguf", "--target-bpw", "0.5"]);
    assert_fails_with(&bpw, "target_bpw 0.5");
    assert_fails_with(&bpw, "bits per weight)");
}

#[test]
fn overrides_come_first_and_a_pattern_that_matches_nothing_is_a_warning() {
    let dir = scratch("gguf-allocation-override");
    let out = dir.join("o.gguf");
    let o = ok(&[
        "-o",
        out.to_str().unwrap(),
        "--scheme",
        "q4_0",
        "--tensor-type",
        "attn_q=q8_0",
        "--tensor-type",
        "attn_.=q5_0",
        "--tensor-type",
        "no_such_tensor=q6_K",
    ]);
    // The first matching override wins, over the sensitive-layer rule too.
    assert_eq!(type_of(&out, "blk.0.attn_q.weight"), "Q8_0");
    assert_eq!(type_of(&out, "blk.0.attn_k.weight"), "Q5_0");
    assert_eq!(type_of(&out, "blk.0.ffn_down.weight"), "Q4_0");
    assert!(
        stdout(&o).contains("warning: tensor_type 'no_such_tensor=q6_K' matches no tensor"),
        "{}",
        stdout(&o)
    );
    // With allocation, overridden tensors are fixed and the rest share what is left.
    let alloc = dir.join("a.gguf");
    let (low, _) = range();
    let o = ok(&[
        "-o",
        alloc.to_str().unwrap(),
        "--max-size",
        &(low + 2000).to_string(),
        "--tensor-type",
        "^output\\.weight$=q8_0",
        "--json",
    ]);
    assert_eq!(type_of(&alloc, "output.weight"), "Q8_0");
    assert!(tensor_bytes(&alloc) <= low + 2000);
    let report = json(&o)["tensors_report"].clone();
    let output = report
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["layer"] == "output.weight")
        .unwrap()
        .clone();
    assert_eq!(output["reason"], "--tensor-type ^output\\.weight$=q8_0");
}

#[test]
fn bad_overrides_and_settings_are_refused_by_name() {
    let o = run(&[
        "-o",
        "/tmp/x.gguf",
        "--scheme",
        "q4_0",
        "--tensor-type",
        "attn_(q=q8_0",
    ]);
    assert_fails_with(
        &o,
        "tensor_type 'attn_(q=q8_0': the pattern does not compile",
    );
    let o = run(&[
        "-o",
        "/tmp/x.gguf",
        "--scheme",
        "q4_0",
        "--tensor-type",
        "ffn_down=q4_K",
    ]);
    assert_fails_with(
        &o,
        "tensor 'blk.0.ffn_down.weight': the override 'ffn_down=q4_K' cannot take it: its rows of 96 values are not whole q4_K blocks of 256",
    );
    let o = run(&[
        "-o",
        "/tmp/x.gguf",
        "--scheme",
        "q4_0",
        "--tensor-type",
        "attn_q",
    ]);
    assert_fails_with(&o, "'attn_q' is not REGEX=SCHEME");
    let o = run(&[
        "-o",
        "/tmp/x.gguf",
        "--scheme",
        "q4_0",
        "--tensor-type",
        "attn_q=q9_9",
    ]);
    assert_fails_with(&o, "unknown scheme 'q9_9'");
    let o = run(&["-o", "/tmp/x.gguf", "--max-size", "12XB"]);
    assert_fails_with(&o, "unknown unit 'XB'");
    let o = run(&["-o", "/tmp/x.gguf", "--max-size", "1MB", "--pure"]);
    assert_fails_with(&o, "give one of them");
    let o = run(&[
        "-o",
        "/tmp/x.gguf",
        "--max-size",
        "1MB",
        "--target-bpw",
        "4",
    ]);
    assert_fails_with(&o, "give one");
    let o = run(&["-o", "/tmp/x.gguf", "--candidates", "q4_K"]);
    assert_fails_with(&o, "give max_size or target_bpw too");
    let o = run(&[
        "-o",
        "/tmp/x.gguf",
        "--max-size",
        "1MB",
        "--candidates",
        "asym",
    ]);
    assert_fails_with(&o, "candidates: scheme 'asym' has no GGUF type");
    let o = run(&[
        "-o",
        "/tmp/out-dir",
        "--format",
        "parquet",
        "--max-size",
        "1MB",
    ]);
    assert_fails_with(&o, "max_size: applies to GGUF output only");
}

#[test]
fn a_recipe_gives_llama_cpp_types_and_file_type() {
    let dir = scratch("gguf-allocation-recipe");
    let out = dir.join("r.gguf");
    ok(&["-o", out.to_str().unwrap(), "--recipe", "q4_k_m"]);
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(
        meta_value(&f, "general.file_type"),
        Some(arrowquant::model::gguf_file::Value::UInt(15))
    );
    // llama.cpp's rules: the output head Q6_K; attention and expert rows Q4_K; the 96-wide
    // ffn_down Q6_K's fallback, Q8_0, in a use_more_bits layer.
    assert_eq!(type_of(&out, "output.weight"), "Q6_K");
    assert_eq!(type_of(&out, "blk.0.attn_q.weight"), "Q4_K");
    assert_eq!(type_of(&out, "blk.0.ffn_down.weight"), "Q8_0");
    let o = run(&["-o", "/tmp/x.gguf", "--recipe", "Q4_K_X"]);
    assert_fails_with(&o, "recipe: ");
    assert_fails_with(&o, "Q4_K_M");
    let o = run(&[
        "-o",
        "/tmp/x.gguf",
        "--recipe",
        "Q4_K_M",
        "--max-size",
        "1MB",
    ]);
    assert_fails_with(&o, "give one of them");
    let o = run(&[
        "-o",
        "/tmp/out-dir",
        "--format",
        "parquet",
        "--recipe",
        "Q4_K_M",
    ]);
    assert_fails_with(&o, "recipe: applies to GGUF output only");
}

/// A legacy llama-imatrix file (`.dat`) of the given entries, ncall 1: int32 count; per entry
/// int32 name length, the name, int32 ncall, int32 value count, the values.
fn write_imatrix(path: &std::path::Path, entries: &[(&str, Vec<f32>)]) {
    let mut b = Vec::new();
    b.extend_from_slice(&(entries.len() as i32).to_le_bytes());
    for (name, values) in entries {
        b.extend_from_slice(&(name.len() as i32).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&1i32.to_le_bytes());
        b.extend_from_slice(&(values.len() as i32).to_le_bytes());
        for v in values {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, b).unwrap();
}

/// Σ importance·(w − ŵ)² of a tensor of `out` against the input, through read_gguf.
fn weighted_error(out: &std::path::Path, name: &str, importance: &[f32]) -> f64 {
    let values = |path: &std::path::Path| -> Vec<Vec<f32>> {
        let sql = format!(
            "SELECT weights FROM read_gguf('{}') WHERE layer = '{name}' ORDER BY row",
            path.display()
        );
        let ctx = arrowquant::session::context();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let batches = rt.block_on(async { ctx.sql(&sql).await.unwrap().collect().await.unwrap() });
        use datafusion::arrow::array::{Array, AsArray};
        use datafusion::arrow::datatypes::Float32Type;
        let mut rows = Vec::new();
        for b in &batches {
            let list = b.column(0).as_list::<i32>();
            for i in 0..list.len() {
                rows.push(
                    list.value(i)
                        .as_primitive::<Float32Type>()
                        .values()
                        .to_vec(),
                );
            }
        }
        rows
    };
    let (a, b) = (values(&root().join(LLAMA)), values(out));
    a.iter()
        .zip(&b)
        .flat_map(|(x, y)| x.iter().zip(y).zip(importance))
        .map(|((x, y), w)| f64::from(*w) * f64::from(x - y).powi(2))
        .sum()
}

#[test]
fn an_importance_matrix_steers_the_codes_and_bad_ones_are_refused() {
    let dir = scratch("gguf-allocation-imatrix");
    // Every fourth input channel carries most of the activation energy.
    let importance: Vec<f32> = (0..256)
        .map(|i| if i % 4 == 0 { 50.0 } else { 0.5 })
        .collect();
    let imatrix = dir.join("model.imatrix.dat");
    write_imatrix(&imatrix, &[("blk.0.attn_q.weight", importance.clone())]);
    let (plain, steered) = (dir.join("plain.gguf"), dir.join("steered.gguf"));
    ok(&["-o", plain.to_str().unwrap(), "--scheme", "q4_K", "--pure"]);
    ok(&[
        "-o",
        steered.to_str().unwrap(),
        "--scheme",
        "q4_K",
        "--pure",
        "--imatrix",
        imatrix.to_str().unwrap(),
    ]);
    let q = "blk.0.attn_q.weight";
    let (e_plain, e_steered) = (
        weighted_error(&plain, q, &importance),
        weighted_error(&steered, q, &importance),
    );
    assert!(e_steered < 0.9 * e_plain, "{e_steered} vs {e_plain}");
    // Tensors it does not cover are written as without it.
    let k = |p: &std::path::Path| {
        let f = GgufFile::open(p).unwrap();
        let t = f
            .tensors()
            .iter()
            .find(|t| t.name == "output.weight")
            .unwrap();
        f.bytes(t.start, t.len).to_vec()
    };
    assert_eq!(k(&plain), k(&steered));
    // Recorded as llama-quantize records it.
    let f = GgufFile::open(&steered).unwrap();
    assert!(meta_text(&f, "quantize.imatrix.file").ends_with("model.imatrix.dat"));
    assert_eq!(
        meta_value(&f, "quantize.imatrix.entries_count"),
        Some(arrowquant::model::gguf_file::Value::Int(1))
    );
    let plain_file = GgufFile::open(&plain).unwrap();
    assert_eq!(meta_value(&plain_file, "quantize.imatrix.file"), None);
    // Allocation measures the covered tensor by its weighted error, every candidate in one
    // query with the importance joined.
    let (low, high) = range();
    let budget = ((low + high) / 2).to_string();
    let allocated = dir.join("allocated.gguf");
    let imatrix_arg = imatrix.to_str().unwrap();
    let o = ok(&[
        "-o",
        allocated.to_str().unwrap(),
        "--max-size",
        &budget,
        "--imatrix",
        imatrix_arg,
        "--json",
    ]);
    let a = &json(&o)["allocation"];
    assert!(a["tensor_bytes"].as_u64().unwrap() <= (low + high) / 2);
    assert!(a["lower_bound"].as_f64().unwrap() <= a["error"].as_f64().unwrap() * (1.0 + 1e-12));

    let bad = dir.join("bad.dat");
    let refusals = [
        (
            "blk.9.attn_q.weight",
            256,
            "tensor 'blk.9.attn_q.weight' is not a tensor of the model",
        ),
        (
            "blk.0.attn_q.weight",
            128,
            "tensor 'blk.0.attn_q.weight' has rows of 256 values, but its importance has 128 channels",
        ),
    ];
    for (name, channels, needle) in refusals {
        write_imatrix(&bad, &[(name, vec![1.0; channels])]);
        let imatrix = bad.to_str().unwrap();
        let o = run(&[
            "-o",
            "/tmp/x.gguf",
            "--scheme",
            "q4_K",
            "--imatrix",
            imatrix,
        ]);
        assert_fails_with(&o, needle);
    }
    let o = run(&[
        "-o",
        "/tmp/x-dir",
        "--format",
        "parquet",
        "--imatrix",
        bad.to_str().unwrap(),
    ]);
    assert_fails_with(&o, "imatrix: applies to GGUF output only");
    let o = run(&[
        "-o",
        "/tmp/x.gguf",
        "--scheme",
        "q4_K",
        "--imatrix",
        "/nonexistent.dat",
    ]);
    assert_fails_with(&o, "/nonexistent.dat");
}
