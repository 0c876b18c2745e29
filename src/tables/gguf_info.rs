//! `gguf_info('path')`: one row per tensor of a GGUF file, read from its header only.

use std::sync::{Arc, LazyLock};

use arrowquant_udfs::support::doc::DOC_TABLES;
use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, Int64Builder, ListBuilder, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::Documentation;

use super::path_argument;
use crate::model::gguf_file::GgufFile;
use crate::model::row_layout;

#[derive(Debug, Default)]
pub struct GgufInfo;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_TABLES,
        "One row per tensor of a GGUF file (versions 2 and 3), read from its header only: \
         {layer, dtype (the ggml type's name: F32, Q4_K, …), ggml_type (its id), shape \
         (outermost first, as read_gguf's rows see it), dims (ggml's order, innermost first), \
         elements, bytes, file_offset (where its bytes start in the file, as gguf-py's data_offset), rows (in read_gguf)}. A corrupt header \
         is refused naming the file and the key or tensor.",
        "gguf_info(path)",
    )
    .with_sql_example(
        "```sql\n> SELECT dtype, count(*), sum(bytes) FROM gguf_info('model.gguf') GROUP BY dtype;\n```",
    )
    .with_argument("path", "A string literal: a .gguf file.")
    .build()
});

impl GgufInfo {
    /// What the catalogue and the README say of this function.
    pub fn documentation() -> &'static Documentation {
        &DOCUMENTATION
    }
}

impl TableFunctionImpl for GgufInfo {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let path = path_argument("gguf_info", &args)?;
        let file = crate::open_gguf(&path)?;
        let batch = info_batch(&file)?;
        Ok(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?))
    }
}

fn int64_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)))
}

pub fn info_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("layer", DataType::Utf8, false),
        Field::new("dtype", DataType::Utf8, false),
        Field::new("ggml_type", DataType::Int32, false),
        Field::new("shape", int64_list(), false),
        Field::new("dims", int64_list(), false),
        Field::new("elements", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("file_offset", DataType::Int64, false),
        Field::new("rows", DataType::Int64, false),
    ]))
}

/// The tensor table of a GGUF file.
pub fn info_batch(file: &GgufFile) -> Result<RecordBatch> {
    let tensors = file.tensors();
    let list = |values: &dyn Fn(&crate::model::gguf_file::GgufTensor) -> Vec<i64>| {
        let mut out = ListBuilder::new(Int64Builder::new());
        for t in tensors {
            out.values().append_slice(&values(t));
            out.append(true);
        }
        Arc::new(out.finish()) as ArrayRef
    };
    let int64 = |f: &dyn Fn(&crate::model::gguf_file::GgufTensor) -> i64| {
        Arc::new(Int64Array::from_iter_values(tensors.iter().map(f))) as ArrayRef
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            tensors.iter().map(|t| t.name.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            tensors.iter().map(|t| t.ggml_type.name),
        )),
        Arc::new(Int32Array::from_iter_values(
            tensors.iter().map(|t| t.ggml_type.id as i32),
        )),
        list(&|t| t.shape.iter().map(|&d| d as i64).collect()),
        list(&|t| t.dims.iter().map(|&d| d as i64).collect()),
        int64(&|t| t.elements() as i64),
        int64(&|t| t.len as i64),
        int64(&|t| t.start as i64),
        int64(&|t| row_layout(&t.shape).0 as i64),
    ];
    Ok(RecordBatch::try_new(info_schema(), columns)?)
}
