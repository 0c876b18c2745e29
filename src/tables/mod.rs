//! Table functions: the weights table and tensor list of safetensors models
//! (`read_safetensors`, `safetensors_info`) and of GGUF files (`read_gguf`, `gguf_info`,
//! `gguf_metadata`), and llama.cpp's importance matrices (`read_imatrix`). [`table_functions`]
//! is the one list: sessions, the Python package and the catalogue all read it.

pub mod gguf_info;
pub mod gguf_metadata;
pub mod read_gguf;
pub mod read_imatrix;
pub mod read_safetensors;
pub mod safetensors_info;
pub mod scan;

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl};

use crate::root::Root;
use datafusion::common::{DFSchema, Result, ScalarValue, plan_err};
use datafusion::logical_expr::{Documentation, Expr, TableProviderFilterPushDown};
use datafusion::prelude::SessionContext;

pub use gguf_info::GgufInfo;
pub use gguf_metadata::GgufMetadata;
pub use read_gguf::{GgufTable, ReadGguf};
pub use read_imatrix::ReadImatrix;
pub use read_safetensors::{ReadSafetensors, SafetensorsTable};
pub use safetensors_info::SafetensorsInfo;

/// A table function: its SQL name, the function, and its documentation.
pub struct TableFunction {
    pub name: &'static str,
    pub function: Arc<dyn TableFunctionImpl>,
    pub documentation: &'static Documentation,
}

/// Every table function, in the order of the README's table.
pub fn table_functions() -> Vec<TableFunction> {
    vec![
        TableFunction {
            name: "read_safetensors",
            function: Arc::new(ReadSafetensors),
            documentation: ReadSafetensors::documentation(),
        },
        TableFunction {
            name: "safetensors_info",
            function: Arc::new(SafetensorsInfo),
            documentation: SafetensorsInfo::documentation(),
        },
        TableFunction {
            name: "read_gguf",
            function: Arc::new(ReadGguf),
            documentation: ReadGguf::documentation(),
        },
        TableFunction {
            name: "gguf_info",
            function: Arc::new(GgufInfo),
            documentation: GgufInfo::documentation(),
        },
        TableFunction {
            name: "gguf_metadata",
            function: Arc::new(GgufMetadata),
            documentation: GgufMetadata::documentation(),
        },
        TableFunction {
            name: "read_imatrix",
            function: Arc::new(ReadImatrix),
            documentation: ReadImatrix::documentation(),
        },
    ]
}

/// Registers every table function.
pub fn register_tables(ctx: &SessionContext) {
    for t in table_functions() {
        ctx.register_udtf(t.name, t.function);
    }
}

/// The documentation of each table function, for the catalogue.
pub fn table_function_docs() -> Vec<&'static Documentation> {
    table_functions()
        .into_iter()
        .map(|t| t.documentation)
        .collect()
}

/// The one argument of every table function: a path given as a non-empty string literal. In a
/// server's session it must lie under the server's root ([`crate::root`]); relative paths
/// start there.
fn path_argument(function: &str, args: &TableFunctionArgs) -> Result<String> {
    let path = literal_path(function, args.exprs())?;
    match Root::of_session(args.session()) {
        Some(root) => Ok(root
            .resolve(&format!("{function} path"), &path)?
            .display()
            .to_string()),
        None => Ok(path),
    }
}

fn literal_path(function: &str, args: &[Expr]) -> Result<String> {
    let path = match args {
        [Expr::Literal(ScalarValue::Utf8(Some(p)), _)]
        | [Expr::Literal(ScalarValue::Utf8View(Some(p)), _)]
        | [Expr::Literal(ScalarValue::LargeUtf8(Some(p)), _)] => Ok(p.clone()),
        [Expr::Literal(v, _)] if v.is_null() => {
            plan_err!("{function}: argument 'path' is NULL; give the file's path as a string")
        }
        [_] => plan_err!("{function}: argument 'path' must be a string literal"),
        _ => plan_err!(
            "{function} takes one argument, the path of a model file or folder; got {}",
            args.len()
        ),
    }?;
    if path.is_empty() {
        return plan_err!("{function}: argument 'path' is empty");
    }
    Ok(path)
}

/// A filter a scan can apply itself: one that reads only `layer` and `dtype`.
fn is_tensor_filter(filter: &Expr) -> bool {
    let columns = filter.column_refs();
    !columns.is_empty()
        && columns
            .iter()
            .all(|c| c.name == "layer" || c.name == "dtype")
}

/// What a weights table says of each filter: inexact for the ones that pick tensors (the scan
/// applies them to its list of tensors; DataFusion still applies them to the rows, which costs
/// nothing next to reading them), unsupported for the rest.
fn tensor_filter_pushdown(filters: &[&Expr]) -> Vec<TableProviderFilterPushDown> {
    filters
        .iter()
        .map(|f| {
            if is_tensor_filter(f) {
                TableProviderFilterPushDown::Inexact
            } else {
                TableProviderFilterPushDown::Unsupported
            }
        })
        .collect()
}

/// The filters a scan applies to its tensors.
fn tensor_filters(filters: &[Expr]) -> Vec<Expr> {
    filters
        .iter()
        .filter(|f| is_tensor_filter(f))
        .cloned()
        .collect()
}

/// The indexes of the tensors passing every pushed-down filter, evaluated on a table of the
/// tensors' (layer, dtype).
fn select_tensors<'a>(
    state: &dyn Session,
    filters: &[Expr],
    layers: impl Iterator<Item = &'a str>,
    dtypes: impl Iterator<Item = String>,
) -> Result<Vec<usize>> {
    let layers = StringArray::from_iter_values(layers);
    let all: Vec<usize> = (0..layers.len()).collect();
    if filters.is_empty() {
        return Ok(all);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("layer", DataType::Utf8, false),
        Field::new("dtype", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(layers),
            Arc::new(StringArray::from_iter_values(dtypes)),
        ],
    )?;
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let mut keep = vec![true; all.len()];
    for filter in filters {
        let predicate = state.create_physical_expr(filter.clone(), &df_schema)?;
        let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
        for (k, m) in keep.iter_mut().zip(mask.as_boolean().iter()) {
            *k &= m == Some(true);
        }
    }
    Ok(all.into_iter().filter(|&i| keep[i]).collect())
}
