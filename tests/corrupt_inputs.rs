//! Corrupt and edited inputs to `dequantize`, `inspect`, `sql` and `quantize --calibration`,
//! through the real binary: every one is one clear line and exit code 1 — never a panic, never
//! a model with gaps filled by zeros — and `dequantize` writes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use safetensors::tensor::{Dtype, SafeTensors};

/// A quantized output of the bundled model, made once and copied for each edit.
fn quantized() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("corrupt-base");
        let o = arrowquant(&["quantize", "-o", "out", "--quiet"], &dir);
        assert!(o.status.success(), "{}", stderr(&o));
        dir.join("out")
    })
}

/// A fresh copy of the quantized output in its own scratch directory; returns (dir, out).
fn copy_of_output(name: &str) -> (PathBuf, PathBuf) {
    let dir = scratch(name);
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    for f in ["weights.parquet", "report.parquet", "manifest.json"] {
        std::fs::copy(quantized().join(f), out.join(f)).unwrap();
    }
    (dir, out)
}

/// Rewrites a Parquet file with the result of `sql` over it (as table `t`).
async fn rewrite(path: &Path, sql: &str) {
    let ctx = SessionContext::new();
    ctx.register_parquet("t", path.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    let tmp = path.with_extension("new.parquet");
    let copy = format!("COPY ({sql}) TO '{}' STORED AS PARQUET", tmp.display());
    ctx.sql(&copy).await.unwrap().collect().await.unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Dequantizes `out` and checks the failure names `needle`, leaving no file behind.
fn dequantize_refused(dir: &Path, needle: &str) {
    let o = arrowquant(&["dequantize", "out", "-o", "model.safetensors"], dir);
    assert_fails_with(&o, needle);
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "out" || name.ends_with(".parquet"),
            "left behind: {name}"
        );
    }
}

/// The three corrupt files of the issue, and one with a garbage footer. (An empty file is
/// tested apart: DataFusion reads an empty file as an empty table.)
fn corrupt_parquet_files() -> Vec<(&'static str, Vec<u8>)> {
    let mut random = b"PAR1".to_vec();
    random.extend(values(64, 7).iter().flat_map(|v| v.to_le_bytes()));
    random.extend_from_slice(b"PAR1");
    let mut lying = b"PAR1".to_vec();
    lying.extend_from_slice(&[0u8; 16]);
    lying.extend_from_slice(&1_000_000u32.to_le_bytes());
    lying.extend_from_slice(b"PAR1");
    // A footer length that fits, over bytes that are not Thrift.
    let mut garbage_footer = b"PAR1".to_vec();
    garbage_footer.extend(std::iter::repeat_n(0xffu8, 40));
    garbage_footer.extend_from_slice(&40u32.to_le_bytes());
    garbage_footer.extend_from_slice(b"PAR1");
    vec![
        ("magic-only", b"PAR1PAR1".to_vec()),
        ("random", random),
        ("lying-footer", lying),
        ("garbage-footer", garbage_footer),
    ]
}

#[test]
fn corrupt_weights_parquet_is_an_error_not_a_panic() {
    let mut files = corrupt_parquet_files();
    files.push(("empty", Vec::new()));
    for (name, bytes) in files {
        let (dir, out) = copy_of_output(&format!("corrupt-weights-{name}"));
        std::fs::write(out.join("weights.parquet"), &bytes).unwrap();
        dequantize_refused(&dir, "weights.parquet");
        let (dir, out) = copy_of_output(&format!("corrupt-report-{name}"));
        std::fs::write(out.join("report.parquet"), &bytes).unwrap();
        dequantize_refused(&dir, "report.parquet");
    }
}

#[test]
fn corrupt_parquet_in_sql_is_an_error_not_a_panic() {
    for (name, bytes) in corrupt_parquet_files() {
        let dir = scratch(&format!("corrupt-sql-{name}"));
        std::fs::write(dir.join("bad.parquet"), &bytes).unwrap();
        let o = arrowquant(&["sql", "-q", "-c", "SELECT * FROM 'bad.parquet'"], &dir);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

#[test]
fn corrupt_calibration_is_an_error_not_a_panic() {
    let mut files = corrupt_parquet_files();
    files.push(("empty", Vec::new()));
    for (name, bytes) in files {
        let dir = scratch(&format!("corrupt-calibration-{name}"));
        std::fs::write(dir.join("acts.parquet"), &bytes).unwrap();
        let o = arrowquant(
            &[
                "quantize",
                "-o",
                "out",
                "--calibration",
                "acts.parquet",
                "-q",
            ],
            &dir,
        );
        assert_fails_with(&o, "calibration acts.parquet");
        assert!(!dir.join("out").exists());
    }
}

/// Bytes flipped inside the data pages, past the footer checks: the decoder's failure (a panic
/// inside the parquet crate for some bytes) is an error naming the file.
#[test]
fn corrupt_pages_are_an_error_not_a_panic() {
    let original = std::fs::read(quantized().join("weights.parquet")).unwrap();
    let footer = u32::from_le_bytes(original[original.len() - 8..][..4].try_into().unwrap());
    let data_end = original.len() - 8 - footer as usize;
    for (i, start) in [4usize, 64, 1000, data_end / 3, data_end / 2, data_end - 200]
        .into_iter()
        .enumerate()
    {
        let mut bytes = original.clone();
        for (k, b) in bytes[start..(start + 64).min(data_end)]
            .iter_mut()
            .enumerate()
        {
            *b ^= 0x5a ^ k as u8;
        }
        let (dir, out) = copy_of_output(&format!("corrupt-pages-{i}"));
        std::fs::write(out.join("weights.parquet"), &bytes).unwrap();
        let o = arrowquant(&["dequantize", "out", "-o", "model.safetensors"], &dir);
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{err}");
        if !o.status.success() {
            assert_eq!(o.status.code(), Some(1), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(!dir.join("model.safetensors").exists());
        }
        let o = arrowquant(
            &[
                "sql",
                "-q",
                "-c",
                "SELECT count(*), sum(octet_length(data)) FROM 'out/weights.parquet'",
            ],
            &dir,
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
    }
}

#[tokio::test]
async fn a_missing_row_is_refused() {
    let (dir, out) = copy_of_output("edit-drop-row");
    rewrite(
        &out.join("weights.parquet"),
        "SELECT * FROM t WHERE NOT (layer = 'conv_in.weight' AND \"row\" = 3)",
    )
    .await;
    dequantize_refused(
        &dir,
        "tensor 'conv_in.weight': row 3 of its 32 rows is missing",
    );
}

#[tokio::test]
async fn zero_rows_are_refused() {
    let (dir, out) = copy_of_output("edit-zero-rows");
    rewrite(&out.join("weights.parquet"), "SELECT * FROM t WHERE false").await;
    dequantize_refused(&dir, "row 0 of its");
}

#[tokio::test]
async fn a_duplicated_row_is_refused() {
    let (dir, out) = copy_of_output("edit-duplicate-row");
    rewrite(
        &out.join("weights.parquet"),
        "SELECT * FROM t UNION ALL SELECT * FROM t WHERE layer = 'conv_in.weight' AND \"row\" = 5",
    )
    .await;
    dequantize_refused(
        &dir,
        "tensor 'conv_in.weight': row 5 appears more than once",
    );
}

#[tokio::test]
async fn a_kept_tensor_cut_short_is_refused() {
    let (dir, out) = copy_of_output("edit-cut-kept");
    rewrite(
        &out.join("weights.parquet"),
        "SELECT layer, \"row\", shape, dtype, q, \
                CASE WHEN layer = 'conv_in.bias' THEN arrow_cast(X'00000000', 'Binary') ELSE data END AS data \
         FROM t",
    )
    .await;
    dequantize_refused(
        &dir,
        "tensor 'conv_in.bias' row 0: 4 bytes of data, but 32 values of F32 need 128",
    );
}

#[tokio::test]
async fn an_inflated_shape_is_refused() {
    // The report alone: its own columns disagree.
    let (dir, out) = copy_of_output("edit-inflate-report");
    rewrite(
        &out.join("report.parquet"),
        "SELECT layer, dtype, CASE WHEN layer = 'conv_in.weight' \
                THEN make_array(CAST(1000000000 AS BIGINT), 4, 3, 3) ELSE shape END AS shape, \
                elements, action, bits, group_size, scheme, reason, fallback_from, cosine, \
                sqnr_db, max_abs_error, mse, bytes_before, bytes_after FROM t",
    )
    .await;
    dequantize_refused(&dir, "tensor 'conv_in.weight': shape [1000000000, 4, 3, 3]");

    // Report, rows and manifest inflated consistently: the rows do not hold the shape.
    let (dir, out) = copy_of_output("edit-inflate-all");
    // conv_in.weight is [32, 3, 3, 3] F32: 108 bytes a row.
    let big = "make_array(CAST(1000000000 AS BIGINT), 3, 3, 3)";
    rewrite(
        &out.join("report.parquet"),
        &format!(
            "SELECT layer, dtype, CASE WHEN layer = 'conv_in.weight' THEN {big} ELSE shape END AS shape, \
                    CASE WHEN layer = 'conv_in.weight' THEN 27000000000 ELSE elements END AS elements, \
                    action, bits, group_size, scheme, reason, fallback_from, cosine, sqnr_db, \
                    max_abs_error, mse, \
                    CASE WHEN layer = 'conv_in.weight' THEN 108000000000 ELSE bytes_before END AS bytes_before, \
                    bytes_after FROM t"
        ),
    )
    .await;
    rewrite(
        &out.join("weights.parquet"),
        &format!(
            "SELECT layer, \"row\", CASE WHEN layer = 'conv_in.weight' THEN {big} ELSE shape END AS shape, \
                    dtype, q, data FROM t"
        ),
    )
    .await;
    let manifest = out.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let before = m["summary"]["bytes_before"].as_u64().unwrap();
    m["summary"]["bytes_before"] = (before - 32 * 27 * 4 + 108_000_000_000u64).into();
    std::fs::write(&manifest, m.to_string()).unwrap();
    dequantize_refused(
        &dir,
        "tensor 'conv_in.weight': row 32 of its 1000000000 rows is missing",
    );
}

#[tokio::test]
async fn report_and_rows_that_do_not_match_are_refused() {
    // A tensor listed twice in the report.
    let (dir, out) = copy_of_output("edit-report-duplicate");
    rewrite(
        &out.join("report.parquet"),
        "SELECT * FROM t UNION ALL SELECT * FROM t WHERE layer = 'conv_in.bias'",
    )
    .await;
    dequantize_refused(&dir, "tensor 'conv_in.bias' is listed twice");

    // A tensor dropped from the report: the manifest no longer adds up.
    let (dir, out) = copy_of_output("edit-report-drop");
    rewrite(
        &out.join("report.parquet"),
        "SELECT * FROM t WHERE layer <> 'conv_in.bias'",
    )
    .await;
    dequantize_refused(
        &dir,
        "manifest.json: summary.tensors is 212 but report.parquet",
    );

    // Rows of a tensor the report does not list.
    let (dir, out) = copy_of_output("edit-unknown-layer");
    rewrite(
        &out.join("weights.parquet"),
        "SELECT CASE WHEN layer = 'conv_in.bias' THEN 'ghost' ELSE layer END AS layer, \
                \"row\", shape, dtype, q, data FROM t",
    )
    .await;
    dequantize_refused(
        &dir,
        "rows of tensor 'ghost', which report.parquet does not list",
    );

    // A NULL layer name, a negative row number.
    let (dir, out) = copy_of_output("edit-null-layer");
    rewrite(
        &out.join("weights.parquet"),
        "SELECT CASE WHEN layer = 'conv_in.bias' THEN NULL ELSE layer END AS layer, \
                \"row\", shape, dtype, q, data FROM t",
    )
    .await;
    dequantize_refused(&dir, "weights.parquet: a row has a NULL layer name");
    let (dir, out) = copy_of_output("edit-negative-row");
    rewrite(
        &out.join("weights.parquet"),
        "SELECT layer, CASE WHEN layer = 'conv_in.weight' AND \"row\" = 2 THEN -2 ELSE \"row\" END AS \"row\", \
                shape, dtype, q, data FROM t",
    )
    .await;
    dequantize_refused(
        &dir,
        "tensor 'conv_in.weight': row number -2 is outside its 32 rows",
    );

    // A quantized row turned into a kept one.
    let (dir, out) = copy_of_output("edit-q-null");
    rewrite(
        &out.join("weights.parquet"),
        "SELECT layer, \"row\", shape, dtype, \
                CASE WHEN layer = 'conv_in.weight' AND \"row\" = 1 THEN NULL ELSE q END AS q, data FROM t",
    )
    .await;
    dequantize_refused(
        &dir,
        "tensor 'conv_in.weight' row 1: the tensor is quantized but the row has no quantized value",
    );
}

#[tokio::test]
async fn wrong_schemas_are_refused() {
    let (dir, out) = copy_of_output("schema-other-table");
    rewrite(&out.join("weights.parquet"), "SELECT 1 AS a, 'x' AS b").await;
    dequantize_refused(&dir, "weights.parquet: no column 'layer'");

    let (dir, out) = copy_of_output("schema-row-type");
    rewrite(
        &out.join("weights.parquet"),
        "SELECT layer, CAST(\"row\" AS VARCHAR) AS \"row\", shape, dtype, q, data FROM t",
    )
    .await;
    dequantize_refused(&dir, "weights.parquet: column 'row' is Utf8");

    let (dir, out) = copy_of_output("schema-q-type");
    rewrite(
        &out.join("weights.parquet"),
        "SELECT layer, \"row\", shape, dtype, 'not a struct' AS q, data FROM t",
    )
    .await;
    dequantize_refused(&dir, "weights.parquet: column 'q' is");

    let (dir, out) = copy_of_output("schema-report-shape");
    rewrite(
        &out.join("report.parquet"),
        "SELECT layer, dtype, 'big' AS shape, elements, action, bytes_before FROM t",
    )
    .await;
    dequantize_refused(&dir, "report.parquet: column 'shape' is Utf8");
}

#[test]
fn bad_files_in_the_output_directory_are_refused() {
    let (dir, out) = copy_of_output("weights-is-dir");
    std::fs::remove_file(out.join("weights.parquet")).unwrap();
    std::fs::create_dir(out.join("weights.parquet")).unwrap();
    dequantize_refused(&dir, "weights.parquet");

    let (dir, out) = copy_of_output("manifest-missing");
    std::fs::remove_file(out.join("manifest.json")).unwrap();
    dequantize_refused(&dir, "no manifest.json");

    for (name, text, needle) in [
        ("garbage", "{not json", "manifest.json: not valid JSON"),
        ("array", "[1, 2]", "manifest.json: format is null"),
        (
            "huge",
            r#"{"format": "arrowquant-1", "summary": {"tensors": 1e300}}"#,
            "manifest.json: summary.tensors is 1e+300, expected a whole number",
        ),
        (
            "count",
            r#"{"format": "arrowquant-1", "summary": {"tensors": 18446744073709551615}}"#,
            "manifest.json: summary.tensors is 18446744073709551615 but report.parquet adds up to 212",
        ),
    ] {
        let (dir, out) = copy_of_output(&format!("manifest-{name}"));
        std::fs::write(out.join("manifest.json"), text).unwrap();
        dequantize_refused(&dir, needle);
    }
}

/// F16 weights up to the type's maximum, quantized at 8 bits: rebuilt as f16, nothing is ±inf.
#[test]
fn f16_output_saturates_at_the_largest_finite_value() {
    let dir = scratch("f16-saturate");
    let n = 64 * 64;
    let bits: Vec<u8> = (0..n)
        .map(|i| {
            // Every 37th value at ±65504, the others spread below it.
            let v = if i % 37 == 0 {
                if i % 2 == 0 { 65504.0 } else { -65504.0 }
            } else {
                (values(1, i as u64)[0]) * 65000.0
            };
            half::f16::from_f32(v)
        })
        .flat_map(|h| h.to_le_bytes())
        .collect();
    write_safetensors(
        &dir.join("big.safetensors"),
        &[Tensor::raw("w", Dtype::F16, &[64, 64], bits)],
    );
    for scheme in ["asym", "sym"] {
        let out = format!("q-{scheme}");
        let o = arrowquant(
            &[
                "quantize",
                "big.safetensors",
                "-o",
                &out,
                "--bits",
                "8",
                "--scheme",
                scheme,
                "--no-fallback",
                "-q",
            ],
            &dir,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let file = format!("{scheme}.safetensors");
        let o = arrowquant(&["dequantize", &out, "-o", &file, "--dtype", "f16"], &dir);
        assert!(o.status.success(), "{}", stderr(&o));
        let bytes = std::fs::read(dir.join(&file)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let w = st.tensor("w").unwrap();
        let max = w
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .inspect(|v| assert!(v.is_finite(), "{scheme}: {v}"))
            .fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 60000.0 && max <= 65504.0, "{scheme}: {max}");
    }
}

/// F4 tensors: one whose elements fill whole bytes is kept and rebuilt byte for byte; one
/// whose elements do not is refused with what is wrong.
#[test]
fn sub_byte_dtypes() {
    let dir = scratch("f4");
    let header = r#"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]},"packed":{"dtype":"F4","shape":[2,4],"data_offsets":[64,68]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(values(16, 3).iter().flat_map(|v| v.to_le_bytes()));
    bytes.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    std::fs::write(dir.join("m.safetensors"), &bytes).unwrap();
    let o = arrowquant(&["inspect", "m.safetensors"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("packed"), "{}", stdout(&o));
    let o = arrowquant(&["quantize", "m.safetensors", "-o", "out", "-q"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = arrowquant(&["dequantize", "out", "-o", "back.safetensors"], &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let back = std::fs::read(dir.join("back.safetensors")).unwrap();
    let back = SafeTensors::deserialize(&back).unwrap();
    let packed = back.tensor("packed").unwrap();
    assert_eq!(packed.dtype(), Dtype::F4);
    assert_eq!(packed.shape(), &[2, 4]);
    assert_eq!(packed.data(), &[0x12, 0x34, 0x56, 0x78]);

    let header = r#"{"odd":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0x12, 0x34]);
    std::fs::write(dir.join("odd.safetensors"), &bytes).unwrap();
    let needle = "tensor 'odd': dtype F4 (4 bits an element) × shape [3] is 12 bits, not a whole number of bytes";
    for command in ["inspect", "quantize"] {
        let o = arrowquant(&[command, "odd.safetensors", "-o", "odd-out"], &dir);
        let o = if command == "inspect" {
            arrowquant(&["inspect", "odd.safetensors"], &dir)
        } else {
            o
        };
        assert_fails_with(&o, needle);
    }
}

#[test]
fn inspect_names_the_tensor_with_nan() {
    let dir = scratch("inspect-nan");
    let mut v = values(6 * 8, 5);
    v[3 * 8 + 2] = f32::NAN;
    write_safetensors(
        &dir.join("m.safetensors"),
        &[
            Tensor::f32("a.weight", &[4, 4], &values(16, 1)),
            Tensor::f32("b.weight", &[6, 8], &v),
        ],
    );
    let o = arrowquant(&["inspect", "m.safetensors"], &dir);
    assert_fails_with(
        &o,
        "tensor 'b.weight' row 3: non-finite value NaN at index 2",
    );
}

/// A quantized value whose codes were cut short: the decoder refuses it, and the error names
/// the tensor and row (the decoder itself only sees a row of a batch).
#[tokio::test]
async fn a_corrupt_quantized_value_names_its_tensor_and_row() {
    let (dir, out) = copy_of_output("edit-codes");
    rewrite(
        &out.join("weights.parquet"),
        "SELECT layer, \"row\", shape, dtype, \
                CASE WHEN layer = 'down_blocks.0.resnets.0.conv1.weight' AND \"row\" = 4 \
                     THEN named_struct('codes', arrow_cast(X'0000', 'Binary'), 'scales', q['scales'], \
                                       'offsets', q['offsets'], 'bits', q['bits'], \
                                       'group_size', q['group_size'], 'len', q['len'], \
                                       'scheme', q['scheme']) \
                     ELSE q END AS q, data FROM t",
    )
    .await;
    dequantize_refused(
        &dir,
        "tensor 'down_blocks.0.resnets.0.conv1.weight' row 4: ",
    );
}
