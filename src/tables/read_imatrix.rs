//! `read_imatrix('path')`: a llama.cpp importance-matrix file, one row per (tensor, matrix).

use std::sync::{Arc, LazyLock};

use arrowquant_udfs::support::doc::DOC_TABLES;
use datafusion::arrow::array::{
    ArrayRef, Float32Builder, Float64Array, ListBuilder, RecordBatch, StringArray, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::Documentation;

use super::path_argument;
use crate::model::imatrix_file::ImatrixFile;

#[derive(Debug, Default)]
pub struct ReadImatrix;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_TABLES,
        "A llama.cpp importance-matrix file (llama-imatrix's output; the GGUF layout or the \
         legacy .dat, told apart by content), one row per weight tensor and matrix: {layer (the \
         tensor's name as llama.cpp names it), matrix (0, or the expert of a merged-expert \
         tensor), channels (its input channels), count (rows in GGUF, chunks in legacy .dat), \
         importance List<Float32> (per input channel, the mean square of the input: \
         in_sum2 / counts, or value / ncall; 1 throughout for an expert of count 0, as \
         llama-quantize reads it), layout ('gguf' or 'legacy')}. The legacy layout does not \
         record experts: a blk.N.*_exps.weight entry is cut into the block's expert count, \
         found from its ffn_gate_inp router entry. A corrupt file is refused naming the file \
         and the entry or tensor.",
        "read_imatrix(path)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, matrix, count, array_max(importance) FROM read_imatrix('imatrix.gguf');\n```",
    )
    .with_argument("path", "A string literal: an imatrix file (.gguf or .dat).")
    .build()
});

impl ReadImatrix {
    /// What the catalogue and the README say of this function.
    pub fn documentation() -> &'static Documentation {
        &DOCUMENTATION
    }
}

impl TableFunctionImpl for ReadImatrix {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let path = path_argument("read_imatrix", &args)?;
        let file =
            ImatrixFile::open(path.as_ref()).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let batch = imatrix_batch(&file)?;
        Ok(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?))
    }
}

pub fn imatrix_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("layer", DataType::Utf8, false),
        Field::new("matrix", DataType::UInt32, false),
        Field::new("channels", DataType::UInt32, false),
        Field::new("count", DataType::Float64, false),
        Field::new(
            "importance",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float32, false))),
            false,
        ),
        Field::new("layout", DataType::Utf8, false),
    ]))
}

/// The rows of an imatrix file.
pub fn imatrix_batch(file: &ImatrixFile) -> Result<RecordBatch> {
    let entries = &file.entries;
    let mut importance = ListBuilder::new(Float32Builder::new())
        .with_field(Arc::new(Field::new_list_field(DataType::Float32, false)));
    for e in entries {
        importance.values().append_slice(&e.importance);
        importance.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.name.as_str()),
        )),
        Arc::new(UInt32Array::from_iter_values(
            entries.iter().map(|e| e.matrix),
        )),
        // The file's reader keeps channels within u32.
        Arc::new(UInt32Array::from_iter_values(
            entries.iter().map(|e| e.channels as u32),
        )),
        Arc::new(Float64Array::from_iter_values(
            entries.iter().map(|e| e.count),
        )),
        Arc::new(importance.finish()),
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|_| file.layout.name()),
        )),
    ];
    Ok(RecordBatch::try_new(imatrix_schema(), columns)?)
}
