//! Table functions: `read_safetensors('path')` and `safetensors_info('path')`.

pub mod read_safetensors;
pub mod safetensors_info;
pub mod scan;

use std::sync::Arc;

use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::{Documentation, Expr};
use datafusion::prelude::SessionContext;

pub use read_safetensors::{ReadSafetensors, SafetensorsTable};
pub use safetensors_info::SafetensorsInfo;

/// Registers both table functions.
pub fn register_tables(ctx: &SessionContext) {
    ctx.register_udtf("read_safetensors", Arc::new(ReadSafetensors));
    ctx.register_udtf("safetensors_info", Arc::new(SafetensorsInfo));
}

/// The documentation of each table function, for the catalogue.
pub fn table_function_docs() -> [&'static Documentation; 2] {
    [
        ReadSafetensors::documentation(),
        SafetensorsInfo::documentation(),
    ]
}

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
