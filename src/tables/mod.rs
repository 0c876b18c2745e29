//! Table functions: `read_safetensors('path')` and `safetensors_info('path')`.

pub mod read_safetensors;
pub mod safetensors_info;
pub mod scan;

use std::sync::Arc;

use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::Expr;
use datafusion::prelude::SessionContext;

pub use read_safetensors::{ReadSafetensors, SafetensorsTable};
pub use safetensors_info::SafetensorsInfo;

/// Registers both table functions.
pub fn register_tables(ctx: &SessionContext) {
    ctx.register_udtf("read_safetensors", Arc::new(ReadSafetensors));
    ctx.register_udtf("safetensors_info", Arc::new(SafetensorsInfo));
}

/// `(syntax, description)` of each table function, for the catalogue.
pub const TABLE_FUNCTION_DOCS: [(&str, &str); 2] = [
    (
        "read_safetensors(path)",
        "The weights table of a model: one row per tensor row {layer, row, shape, dtype, weights          List<Float32>, data (the row's bytes as stored)}. path is a .safetensors file, a          *.safetensors.index.json, a model folder or a diffusers pipeline folder (tensors named          component.tensor). Memory-mapped; F32 zero-copy where aligned, F16 and BF16 widened          exactly, F64 narrowed; weights is NULL for integer and bool tensors. Filters on layer          and dtype are pushed down. Corrupt files are refused with the file and tensor named.",
    ),
    (
        "safetensors_info(path)",
        "One row per tensor, read from the headers only: {layer, dtype, shape, elements, bytes,          rows (in read_safetensors), file}.",
    ),
];

/// The one argument of both functions: a path given as a string literal.
fn path_argument(function: &str, args: &[Expr]) -> Result<String> {
    match args {
        [Expr::Literal(ScalarValue::Utf8(Some(p)), _)]
        | [Expr::Literal(ScalarValue::Utf8View(Some(p)), _)]
        | [Expr::Literal(ScalarValue::LargeUtf8(Some(p)), _)] => Ok(p.clone()),
        [_] => plan_err!("{function}: argument 'path' must be a string literal"),
        _ => plan_err!(
            "{function} takes one argument, the path of a safetensors file or model folder; \
             got {}",
            args.len()
        ),
    }
}
