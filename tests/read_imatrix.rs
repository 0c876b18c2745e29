//! llama.cpp importance-matrix files through a real session: the GGUF and the legacy layout of
//! the same statistics (scripts/make_imatrix_files.py) read to the same rows and to the values
//! the script wrote, experts included; edited copies of both are refused naming the file and
//! the entry or tensor, and the inputs are never modified.

mod common;

use std::path::{Path, PathBuf};

use arrowquant::model::gguf_file::{GgmlType, GgufFile};
use arrowquant::model::gguf_write::{MetaValue, TensorToWrite, write_gguf};
use arrowquant::model::imatrix_file::{ImatrixFile, ImatrixLayout};
use arrowquant::session;
use common::scratch;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Float32Type, Float64Type, UInt32Type};

const GGUF: &str = "tests/data/imatrix/tiny.imatrix.gguf";
const LEGACY: &str = "tests/data/imatrix/tiny.imatrix.dat";
const EXPECTED: &str = "tests/data/imatrix/expected.json";

async fn query(sql: &str) -> datafusion::common::Result<Vec<RecordBatch>> {
    session::context().sql(sql).await?.collect().await
}

async fn rows(path: &Path) -> RecordBatch {
    let sql = format!(
        "SELECT layer, matrix, channels, count, importance, layout FROM read_imatrix('{}') \
         ORDER BY layer, matrix",
        path.display()
    );
    let batches = query(&sql).await.unwrap();
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// The error of reading `path`, the file given as it is written.
async fn error(path: &Path) -> String {
    let sql = format!("SELECT * FROM read_imatrix('{}')", path.display());
    query(&sql).await.unwrap_err().strip_backtrace()
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(EXPECTED).unwrap()).unwrap()
}

#[tokio::test]
async fn both_layouts_read_to_the_expected_rows() {
    let want = expected();
    let want_rows = want["rows"].as_array().unwrap();
    for (path, layout, count_key) in [
        (GGUF, "gguf", "count_gguf"),
        (LEGACY, "legacy", "count_legacy"),
    ] {
        let batch = rows(Path::new(path)).await;
        assert_eq!(batch.num_rows(), want_rows.len(), "{path}");
        let layer = batch.column(0).as_string::<i32>();
        let matrix = batch.column(1).as_primitive::<UInt32Type>();
        let channels = batch.column(2).as_primitive::<UInt32Type>();
        let count = batch.column(3).as_primitive::<Float64Type>();
        let importance = batch.column(4).as_list::<i32>();
        let layouts = batch.column(5).as_string::<i32>();
        for (i, w) in want_rows.iter().enumerate() {
            let at = format!("{path} row {i}");
            assert_eq!(layer.value(i), w["layer"].as_str().unwrap(), "{at}");
            assert_eq!(
                u64::from(matrix.value(i)),
                w["matrix"].as_u64().unwrap(),
                "{at}"
            );
            assert_eq!(
                u64::from(channels.value(i)),
                w["channels"].as_u64().unwrap(),
                "{at}"
            );
            assert_eq!(count.value(i), w[count_key].as_f64().unwrap(), "{at}");
            assert_eq!(layouts.value(i), layout, "{at}");
            let got: Vec<f32> = importance
                .value(i)
                .as_primitive::<Float32Type>()
                .values()
                .to_vec();
            let want: Vec<f32> = w["importance"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            // Multiples of 1/16 throughout: both layouts divide to them exactly.
            assert_eq!(got, want, "{at}");
        }
    }
    // Same rows but for the count (rows in GGUF, chunks in legacy) and the layout.
    let strip = |b: RecordBatch| b.project(&[0, 1, 2, 4]).unwrap();
    assert_eq!(
        strip(rows(Path::new(GGUF)).await),
        strip(rows(Path::new(LEGACY)).await)
    );
}

#[test]
fn file_information_and_llama_quantize_vectors() {
    let want = expected();
    let gguf = ImatrixFile::open(Path::new(GGUF)).unwrap();
    let legacy = ImatrixFile::open(Path::new(LEGACY)).unwrap();
    assert_eq!(
        (gguf.layout, legacy.layout),
        (ImatrixLayout::Gguf, ImatrixLayout::Legacy)
    );
    assert_eq!(gguf.chunk_count, want["chunk_count"].as_u64());
    assert_eq!(legacy.chunk_count, want["chunk_count"].as_u64());
    assert_eq!(gguf.chunk_size, want["chunk_size"].as_u64());
    assert_eq!(legacy.chunk_size, None);
    let datasets: Vec<String> = serde_json::from_value(want["datasets"].clone()).unwrap();
    assert_eq!(gguf.datasets, datasets);
    assert_eq!(legacy.datasets, datasets);
    let experts = gguf.matrices("blk.0.ffn_down_exps.weight");
    assert_eq!(experts.len(), 2);
    assert_eq!((experts[0].count, experts[1].count), (40.0, 24.0));
    assert_eq!(experts[1].matrix, 1);
    // What llama-quantize takes: n_per_row × n_expert values, expert after expert.
    let flat = gguf.flat_importance("blk.0.ffn_down_exps.weight").unwrap();
    assert_eq!(flat.len(), 24);
    assert_eq!(flat[12..], experts[1].importance[..]);
    assert_eq!(
        legacy
            .flat_importance("blk.0.ffn_down_exps.weight")
            .unwrap(),
        flat
    );
}

#[tokio::test]
async fn bad_arguments_and_missing_files_are_refused() {
    let e = query("SELECT * FROM read_imatrix()")
        .await
        .unwrap_err()
        .strip_backtrace();
    assert!(e.contains("read_imatrix takes one argument"), "{e}");
    let e = query("SELECT * FROM read_imatrix(NULL)")
        .await
        .unwrap_err()
        .strip_backtrace();
    assert!(e.contains("read_imatrix: argument 'path' is NULL"), "{e}");
    let e = error(Path::new("tests/data/imatrix/absent.dat")).await;
    assert!(e.contains("absent.dat: no such file or directory"), "{e}");
    // A model GGUF is not an importance matrix.
    let e = error(Path::new("tests/data/gguf/tiny.gguf")).await;
    assert!(
        e.contains("tiny.gguf: not a llama.cpp imatrix file: a GGUF file without general.type")
            || e.contains("tiny.gguf: not a llama.cpp imatrix file: a GGUF file of general.type"),
        "{e}"
    );
}

/// The legacy file's entries, read by the specification (the file is trusted here).
struct Legacy {
    entries: Vec<(Vec<u8>, i32, i32, Vec<f32>)>,
    tail: Vec<u8>,
}

fn read_legacy() -> Legacy {
    let b = std::fs::read(LEGACY).unwrap();
    let i32_at = |p: usize| i32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let n = i32_at(0);
    let mut pos = 4;
    let mut entries = Vec::new();
    for _ in 0..n {
        let len = i32_at(pos) as usize;
        let name = b[pos + 4..pos + 4 + len].to_vec();
        pos += 4 + len;
        let (ncall, nval) = (i32_at(pos), i32_at(pos + 4));
        pos += 8;
        let values = (0..nval as usize)
            .map(|j| f32::from_le_bytes(b[pos + 4 * j..pos + 4 * j + 4].try_into().unwrap()))
            .collect();
        pos += 4 * nval as usize;
        entries.push((name, ncall, nval, values));
    }
    Legacy {
        entries,
        tail: b[pos..].to_vec(),
    }
}

impl Legacy {
    fn bytes(&self) -> Vec<u8> {
        let mut out = (self.entries.len() as i32).to_le_bytes().to_vec();
        for (name, ncall, nval, values) in &self.entries {
            out.extend((name.len() as i32).to_le_bytes());
            out.extend(name);
            out.extend(ncall.to_le_bytes());
            out.extend(nval.to_le_bytes());
            out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
        out.extend(&self.tail);
        out
    }

    fn entry(&mut self, name: &str) -> &mut (Vec<u8>, i32, i32, Vec<f32>) {
        self.entries
            .iter_mut()
            .find(|e| e.0 == name.as_bytes())
            .unwrap()
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn corrupt_legacy_files_are_refused_naming_the_file_and_the_entry() {
    let dir = scratch("imatrix-legacy");
    let good = std::fs::read(LEGACY).unwrap();
    let edit = |f: &dyn Fn(&mut Legacy)| {
        let mut l = read_legacy();
        f(&mut l);
        l.bytes()
    };
    let q = "blk.0.attn_q.weight";
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "empty.dat",
            vec![],
            "empty.dat: not a llama.cpp imatrix file: the entry count needs 4 bytes at byte 0 \
             but the file has 0 left"
                .into(),
        ),
        (
            "cut.dat",
            good[..150].to_vec(),
            "cut.dat: not a llama.cpp imatrix file: the nval of entry 'blk.0.ffn_down_exps.weight' \
             (at byte 101) is 24, more than the 45 bytes left could hold"
                .into(),
        ),
        (
            "huge.dat",
            [&i32::MAX.to_le_bytes()[..], &good[4..]].concat(),
            "huge.dat: not a llama.cpp imatrix file: the entry count (at byte 0) is 2147483647, \
             more than the"
                .into(),
        ),
        (
            "negative.dat",
            [&good[..4], &(-7i32).to_le_bytes()[..], &good[8..]].concat(),
            "negative.dat: not a llama.cpp imatrix file: the name length of entry 0 (at byte 4) \
             is -7"
                .into(),
        ),
        (
            "utf8.dat",
            [&good[..8], &[0xc3, 0x28][..], &good[10..]].concat(),
            "utf8.dat: not a llama.cpp imatrix file: the name of entry 0 (at byte 8) is not UTF-8"
                .into(),
        ),
        (
            "ncall.dat",
            edit(&|l| l.entry(q).1 = -1),
            format!("ncall.dat: tensor '{q}': ncall is -1"),
        ),
        (
            "nval.dat",
            edit(&|l| l.entry(q).2 = -3),
            format!(
                "nval.dat: not a llama.cpp imatrix file: the nval of entry '{q}' (at byte 31) is -3"
            ),
        ),
        (
            "nan.dat",
            edit(&|l| l.entry(q).3[5] = f32::NAN),
            format!("nan.dat: tensor '{q}': the entry: channel 5 has the sum of squares NaN"),
        ),
        (
            "twice.dat",
            edit(&|l| l.entry("blk.0.ffn_gate_inp.weight").0 = q.as_bytes().to_vec()),
            format!("twice.dat: tensor '{q}': appears twice"),
        ),
        (
            "experts.dat",
            edit(&|l| {
                let e = l.entry("blk.0.ffn_down_exps.weight");
                e.3.pop();
                e.2 -= 1;
            }),
            "experts.dat: tensor 'blk.0.ffn_down_exps.weight': its 23 values do not split into \
             the 2 experts of its block (16 values of blk.0.ffn_gate_exps.weight / 8 of \
             blk.0.ffn_gate_inp.weight)"
                .into(),
        ),
        (
            "trailing.dat",
            [&good[..], b"xy"].concat(),
            "trailing.dat: not a llama.cpp imatrix file: 2 bytes after the dataset name".into(),
        ),
    ];
    for (name, bytes, want) in cases {
        let e = error(&write(&dir, name, &bytes)).await;
        assert!(e.contains(&want), "{name}: {e}\nwanted: {want}");
    }
    assert_eq!(
        std::fs::read(LEGACY).unwrap(),
        good,
        "the input was modified"
    );
}

/// The GGUF file as metadata and tensors to write again, edited.
struct Gguf {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, GgmlType, Vec<u64>, Vec<u8>)>,
}

fn read_gguf() -> Gguf {
    let f = GgufFile::open(Path::new(GGUF)).unwrap();
    let metadata = f
        .header()
        .metadata
        .iter()
        .map(|e| {
            let raw = f.bytes(e.value.start, e.value.len()).to_vec();
            (e.key.clone(), MetaValue::Raw(e.value_type, raw))
        })
        .collect();
    let tensors = f
        .tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.ggml_type,
                t.dims.clone(),
                f.bytes(t.start, t.len).to_vec(),
            )
        })
        .collect();
    Gguf { metadata, tensors }
}

impl Gguf {
    fn bytes(&self) -> Vec<u8> {
        let tensors: Vec<TensorToWrite> = self
            .tensors
            .iter()
            .map(|(name, ggml_type, dims, data)| TensorToWrite {
                name,
                ggml_type: *ggml_type,
                dims: dims.clone(),
                data,
            })
            .collect();
        let mut out = Vec::new();
        write_gguf(&mut out, &self.metadata, &tensors).unwrap();
        out
    }

    fn tensor(&mut self, name: &str) -> &mut (String, GgmlType, Vec<u64>, Vec<u8>) {
        self.tensors.iter_mut().find(|t| t.0 == name).unwrap()
    }

    fn set_f32(&mut self, name: &str, index: usize, value: f32) {
        self.tensor(name).3[4 * index..4 * index + 4].copy_from_slice(&value.to_le_bytes());
    }
}

#[tokio::test]
async fn corrupt_gguf_files_are_refused_naming_the_file_and_the_tensor() {
    let dir = scratch("imatrix-gguf");
    let good = std::fs::read(GGUF).unwrap();
    assert_eq!(
        read_gguf().bytes(),
        good,
        "the test's writer rewrites the file as it is"
    );
    let edit = |f: &dyn Fn(&mut Gguf)| {
        let mut g = read_gguf();
        f(&mut g);
        g.bytes()
    };
    let down = "blk.0.ffn_down_exps.weight";
    let q = "blk.0.attn_q.weight";
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "cut.gguf",
            good[..1186].to_vec(),
            "cut.gguf: tensor 'blk.0.ffn_gate_inp.weight.counts': its 4 bytes".into(),
        ),
        (
            "magic.gguf",
            [b"GGUX", &good[4..]].concat(),
            "magic.gguf: not a llama.cpp imatrix file: the entry count (at byte 0)".into(),
        ),
        (
            "type.gguf",
            edit(&|g| {
                g.metadata[0].1 = MetaValue::String("model".into());
            }),
            "type.gguf: not a llama.cpp imatrix file: a GGUF file of general.type \"model\"".into(),
        ),
        (
            "chunks.gguf",
            edit(&|g| {
                let e = g
                    .metadata
                    .iter_mut()
                    .find(|m| m.0 == "imatrix.chunk_count")
                    .unwrap();
                e.1 = MetaValue::F32(4.0);
            }),
            "chunks.gguf: metadata key 'imatrix.chunk_count': must be an integer".into(),
        ),
        (
            "no-counts.gguf",
            edit(&|g| g.tensors.retain(|t| t.0 != format!("{down}.counts"))),
            format!(
                "no-counts.gguf: tensor '{down}': the file has {down}.in_sum2 but no {down}.counts"
            ),
        ),
        (
            "no-sums.gguf",
            edit(&|g| g.tensors.retain(|t| t.0 != format!("{down}.in_sum2"))),
            format!("no-sums.gguf: tensor '{down}': the file has no {down}.in_sum2"),
        ),
        (
            "f16.gguf",
            edit(&|g| {
                let t = g.tensor(&format!("{q}.in_sum2"));
                t.1 = GgmlType::from_name("F16").unwrap();
                t.3.truncate(16);
            }),
            format!("f16.gguf: tensor '{q}.in_sum2': is F16, not F32"),
        ),
        (
            "shape.gguf",
            edit(&|g| {
                let t = g.tensor(&format!("{down}.counts"));
                t.2 = vec![2, 1];
            }),
            format!("shape.gguf: tensor '{down}.counts': has ne [2, 1], not [1, 2]"),
        ),
        (
            "in-sum.gguf",
            edit(&|g| {
                let t = g.tensor(&format!("{q}.in_sum"));
                t.2 = vec![4];
                t.3.truncate(16);
            }),
            format!("in-sum.gguf: tensor '{q}.in_sum': has ne [4], not the shape of {q}.in_sum2"),
        ),
        (
            "zero.gguf",
            edit(&|g| g.set_f32(&format!("{down}.counts"), 1, 0.0)),
            format!("zero.gguf: tensor '{down}': matrix 1 has count 0 but channel 0 has"),
        ),
        (
            "negative.gguf",
            edit(&|g| g.set_f32(&format!("{q}.counts"), 0, -64.0)),
            format!("negative.gguf: tensor '{q}': the tensor has count -64"),
        ),
        (
            "nan.gguf",
            edit(&|g| g.set_f32(&format!("{down}.counts"), 0, f32::NAN)),
            format!("nan.gguf: tensor '{down}': matrix 0 has count NaN"),
        ),
        (
            "fraction.gguf",
            edit(&|g| g.set_f32(&format!("{down}.counts"), 0, 0.5)),
            format!("fraction.gguf: tensor '{down}': matrix 0 has count 0.5, not a whole number"),
        ),
        (
            "sums.gguf",
            edit(&|g| g.set_f32(&format!("{down}.in_sum2"), 13, -1.0)),
            format!("sums.gguf: tensor '{down}': matrix 1: channel 1 has the sum of squares -1"),
        ),
    ];
    for (name, bytes, want) in cases {
        let e = error(&write(&dir, name, &bytes)).await;
        assert!(e.contains(&want), "{name}: {e}\nwanted: {want}");
    }
    assert_eq!(std::fs::read(GGUF).unwrap(), good, "the input was modified");
}
