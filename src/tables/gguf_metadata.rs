//! `gguf_metadata('path')`: the metadata of a GGUF file, one row per key.

use std::sync::{Arc, LazyLock};

use arrowquant_udfs::support::doc::DOC_TABLES;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::Documentation;

use super::path_argument;
use crate::model::gguf_file::{GgufFile, MetadataEntry};

#[derive(Debug, Default)]
pub struct GgufMetadata;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_TABLES,
        "The metadata of a GGUF file, one row per key in file order: {key, value_type (gguf's \
         name: STRING, UINT32, …; ARRAY[item type] for arrays), value (a string as it is, \
         anything else as JSON; invalid UTF-8 in a string is shown as U+FFFD), json (the value \
         as JSON, strings quoted)}.",
        "gguf_metadata(path)",
    )
    .with_sql_example(
        "```sql\n> SELECT value FROM gguf_metadata('model.gguf') WHERE key = 'general.architecture';\n```",
    )
    .with_argument("path", "A string literal: a .gguf file.")
    .build()
});

impl GgufMetadata {
    /// What the catalogue and the README say of this function.
    pub fn documentation() -> &'static Documentation {
        &DOCUMENTATION
    }
}

impl TableFunctionImpl for GgufMetadata {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let path = path_argument("gguf_metadata", &args)?;
        let file = crate::open_gguf(&path)?;
        let batch = metadata_batch(&file)?;
        Ok(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?))
    }
}

pub fn metadata_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value_type", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("json", DataType::Utf8, false),
    ]))
}

fn type_name(entry: &MetadataEntry) -> String {
    match entry.item_type {
        Some(item) => format!("ARRAY[{}]", item.name()),
        None => entry.value_type.name().to_string(),
    }
}

/// The metadata table of a GGUF file.
pub fn metadata_batch(file: &GgufFile) -> Result<RecordBatch> {
    let entries = &file.header().metadata;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.key.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(entries.iter().map(type_name))),
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| file.text(e)),
        )),
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| file.json(e)),
        )),
    ];
    Ok(RecordBatch::try_new(metadata_schema(), columns)?)
}
