//! `safetensors_info('path')`: one row per tensor (name, dtype, shape, bytes), read from the
//! headers only.

use std::sync::{Arc, LazyLock};

use arrowquant_udfs::support::doc::DOC_TABLES;
use datafusion::arrow::array::{
    ArrayRef, Int64Array, Int64Builder, ListBuilder, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::Documentation;

use super::path_argument;
use crate::model::{Model, dtype_name, row_layout};

#[derive(Debug, Default)]
pub struct SafetensorsInfo;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_TABLES,
        "One row per tensor, read from the headers only: {layer, dtype, shape, elements, bytes, \
         rows (in read_safetensors), file}.",
        "safetensors_info(path)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, dtype, shape FROM safetensors_info('model_dir') ORDER BY bytes DESC;\n```",
    )
    .with_argument("path", "A string literal: as for read_safetensors.")
    .build()
});

impl SafetensorsInfo {
    /// What the catalogue and the README say of this function.
    pub fn documentation() -> &'static Documentation {
        &DOCUMENTATION
    }
}

impl TableFunctionImpl for SafetensorsInfo {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let path = path_argument("safetensors_info", &args)?;
        let model = crate::open_model(&path)?;
        let batch = info_batch(&model)?;
        Ok(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?))
    }
}

pub fn info_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("layer", DataType::Utf8, false),
        Field::new("dtype", DataType::Utf8, false),
        Field::new(
            "shape",
            DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
            false,
        ),
        Field::new("elements", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("file", DataType::Utf8, false),
    ]))
}

/// The tensor table of a model.
pub fn info_batch(model: &Model) -> Result<RecordBatch> {
    let tensors = &model.tensors;
    let mut shapes = ListBuilder::new(Int64Builder::new());
    for t in tensors {
        shapes
            .values()
            .append_slice(&t.meta.shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
        shapes.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            tensors.iter().map(|t| t.layer.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            tensors.iter().map(|t| dtype_name(t.meta.dtype)),
        )),
        Arc::new(shapes.finish()),
        Arc::new(Int64Array::from_iter_values(
            tensors.iter().map(|t| t.meta.elements() as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            tensors.iter().map(|t| t.meta.len as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            tensors.iter().map(|t| row_layout(&t.meta.shape).0 as i64),
        )),
        Arc::new(StringArray::from_iter_values(
            tensors
                .iter()
                .map(|t| model.file(t).path().display().to_string()),
        )),
    ];
    Ok(RecordBatch::try_new(info_schema(), columns)?)
}
