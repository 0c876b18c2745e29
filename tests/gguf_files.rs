//! GGUF files read through real sessions: version 2 as well as 3, a file split into many
//! batches and partitions, truncated and edited copies refused naming the file and the tensor,
//! and the input never modified.

mod common;

use std::path::Path;

use arrowquant::model::gguf_file::GgmlType;
use arrowquant::model::gguf_write::{MetaValue, TensorToWrite, write_gguf};
use arrowquant::session;
use common::scratch;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float32Type, Int64Type};

const TINY: &str = "tests/data/gguf/tiny.gguf";

async fn query(sql: &str) -> datafusion::common::Result<Vec<RecordBatch>> {
    session::context().sql(sql).await?.collect().await
}

async fn error(sql: &str) -> String {
    query(sql).await.unwrap_err().strip_backtrace()
}

#[tokio::test]
async fn version_2_files_read_as_version_3() {
    let dir = scratch("gguf-v2");
    let mut bytes = std::fs::read(TINY).unwrap();
    assert_eq!(&bytes[4..8], &3u32.to_le_bytes());
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = dir.join("v2.gguf");
    std::fs::write(&v2, &bytes).unwrap();
    let sql = |p: &Path| {
        format!(
            "SELECT count(*), sum(bytes) FROM gguf_info('{}')",
            p.display()
        )
    };
    let a = query(&sql(&v2)).await.unwrap();
    let b = query(&sql(Path::new(TINY))).await.unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn truncated_and_edited_files_are_refused_naming_the_tensor() {
    let dir = scratch("gguf-corrupt");
    let bytes = std::fs::read(TINY).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = error(&format!("SELECT * FROM read_gguf('{}')", cut.display())).await;
    assert!(
        e.contains("cut.gguf: tensor 'output.weight': its 288 bytes at offset 1920")
            && e.contains("run past the end of the file"),
        "{e}"
    );
    let head = dir.join("head.gguf");
    std::fs::write(&head, &bytes[..40]).unwrap();
    let e = error(&format!(
        "SELECT * FROM gguf_metadata('{}')",
        head.display()
    ))
    .await;
    assert!(
        e.contains(
            "head.gguf: not a GGUF file: the tensor count is 10, more than the 24 bytes left"
        ),
        "{e}"
    );
    assert_eq!(
        std::fs::read(TINY).unwrap(),
        bytes,
        "the input was modified"
    );
}

/// A file of many rows, read in batches of 7 rows over 3 partitions, returns every row once,
/// in order within its tensor, with the values written.
#[tokio::test]
async fn many_batches_return_every_row_once() {
    let dir = scratch("gguf-batches");
    let rows = 100u64;
    let cols = 64u64;
    let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16_bytes: Vec<u8> = values
        .iter()
        .flat_map(|v| half::f16::from_f32(*v / 8.0).to_le_bytes())
        .collect();
    let tensors = [
        TensorToWrite {
            name: "a",
            ggml_type: GgmlType::from_name("F32").unwrap(),
            dims: vec![cols, rows],
            data: &f32_bytes,
        },
        TensorToWrite {
            name: "b",
            ggml_type: GgmlType::from_name("F16").unwrap(),
            dims: vec![cols, rows],
            data: &f16_bytes,
        },
    ];
    let path = dir.join("many.gguf");
    let mut out = Vec::new();
    write_gguf(
        &mut out,
        &[("general.alignment".into(), MetaValue::U32(128))],
        &tensors,
    )
    .unwrap();
    std::fs::write(&path, out).unwrap();
    let config = session::config()
        .with_batch_size(7)
        .with_target_partitions(3);
    let ctx = datafusion::prelude::SessionContext::new_with_config(config);
    arrowquant::tables::register_tables(&ctx);
    let sql = format!(
        "SELECT layer, row, weights[1] AS first, array_length(weights) AS n FROM read_gguf('{}') ORDER BY layer, row",
        path.display()
    );
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    let batch = datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(batch.num_rows(), 200);
    let row = batch.column(1).as_primitive::<Int64Type>();
    let first = batch.column(2).as_primitive::<Float32Type>();
    for i in 0..200 {
        let (tensor, r) = (i / 100, (i % 100) as u64);
        assert_eq!(row.value(i), r as i64);
        // F16 holds every multiple of 8 up to 792 exactly.
        let want = (r * cols) as f32 / if tensor == 0 { 1.0 } else { 8.0 };
        assert_eq!(first.value(i), want, "row {i}");
    }
}

/// Every block type gguf-py can dequantize reads, the i-quants, TQ and FP4 types included: the
/// weights of each row are the kernel's decoding of its `data`, over batches of two rows in
/// three partitions (so units start mid-tensor). The types gguf-py cannot dequantize either
/// (Q8_K, Q8_1, Q1_0) are refused naming the tensor and the type, while their bytes read.
/// (python/tests/test_gguf.py holds every decoded type to gguf-py's values bit for bit.)
#[tokio::test]
async fn every_type_gguf_py_decodes_reads_and_the_rest_are_refused() {
    use arrowquant_udfs::kernels::iquants::{self, IFormat};
    struct Written {
        layer: String,
        ggml_type: GgmlType,
        cols: u64,
        rows: u64,
        bytes: Vec<u8>,
    }
    let dir = scratch("gguf-iquants");
    // xorshift64: any bytes are a block.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: u64| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    };
    let mut written = Vec::new();
    for format in IFormat::ALL {
        let ggml_type = GgmlType::from_id(format.ggml_type()).unwrap();
        let (cols, rows) = (2 * u64::from(ggml_type.block_values), 5);
        let layer = format!("ok.{}", format.name());
        let bytes = random(ggml_type.bytes_of(cols * rows).unwrap());
        written.push(Written {
            layer,
            ggml_type,
            cols,
            rows,
            bytes,
        });
    }
    for name in ["Q8_K", "Q8_1", "Q1_0"] {
        let ggml_type = GgmlType::from_name(name).unwrap();
        let layer = format!("no.{}", name.to_lowercase());
        let cols = u64::from(ggml_type.block_values);
        let bytes = random(u64::from(ggml_type.block_bytes));
        written.push(Written {
            layer,
            ggml_type,
            cols,
            rows: 1,
            bytes,
        });
    }
    let tensors: Vec<TensorToWrite> = written
        .iter()
        .map(|w| TensorToWrite {
            name: &w.layer,
            ggml_type: w.ggml_type,
            dims: vec![w.cols, w.rows],
            data: &w.bytes,
        })
        .collect();
    let path = dir.join("iquants.gguf");
    let mut out = Vec::new();
    write_gguf(&mut out, &[], &tensors).unwrap();
    std::fs::write(&path, out).unwrap();
    let find = |layer: &str| written.iter().find(|w| w.layer == layer).unwrap();

    let config = session::config()
        .with_batch_size(2)
        .with_target_partitions(3);
    let ctx = datafusion::prelude::SessionContext::new_with_config(config);
    arrowquant::tables::register_tables(&ctx);
    let sql = format!(
        "SELECT layer, row, weights, data FROM read_gguf('{}') WHERE layer LIKE 'ok.%' ORDER BY layer, row",
        path.display()
    );
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    let batch = datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(batch.num_rows(), IFormat::ALL.len() * 5);
    let layers = batch.column(0).as_string::<i32>();
    let row = batch.column(1).as_primitive::<Int64Type>();
    let weights = batch.column(2).as_list::<i32>();
    let data = batch.column(3).as_binary::<i32>();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut decoded = Vec::new();
    for i in 0..batch.num_rows() {
        let w = find(layers.value(i));
        let format = IFormat::from_ggml_type(w.ggml_type.id).unwrap();
        let (cols, r) = (w.cols as usize, row.value(i) as usize);
        let row_bytes = format.row_bytes(cols).unwrap();
        let stored = &w.bytes[r * row_bytes..(r + 1) * row_bytes];
        assert_eq!(data.value(i), stored, "{} row {r}", w.layer);
        iquants::dequantize_row(format, stored, cols, &mut decoded).unwrap();
        let got = weights.value(i);
        let got = got.as_primitive::<Float32Type>().values();
        assert_eq!(got.len(), cols, "{} row {r}", w.layer);
        assert_eq!(bits(got), bits(&decoded), "{} row {r}", w.layer);
    }

    for ty in ["Q8_K", "Q8_1", "Q1_0"] {
        let layer = format!("no.{}", ty.to_lowercase());
        let e = error(&format!(
            "SELECT weights FROM read_gguf('{}') WHERE layer = '{layer}'",
            path.display()
        ))
        .await;
        let want = format!(
            "iquants.gguf: tensor '{layer}' is {ty}, which ArrowQuant cannot dequantize yet"
        );
        assert!(e.contains(&want), "{e}");
        let read = query(&format!(
            "SELECT data FROM read_gguf('{}') WHERE layer = '{layer}'",
            path.display()
        ))
        .await
        .unwrap();
        assert_eq!(
            read[0].column(0).as_binary::<i32>().value(0),
            find(&layer).bytes,
            "{ty}"
        );
    }
}
