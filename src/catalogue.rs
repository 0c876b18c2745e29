//! The function catalogue as Markdown, from each function's own `Documentation`: the README's
//! table is this output (a test keeps the two the same).

use arrowquant_udfs::udfs;

use datafusion::logical_expr::Documentation;

fn row(kind: &str, doc: Option<&Documentation>) -> String {
    let Some(doc) = doc else { return String::new() };
    let description = doc.description.replace('|', "\\|").replace('\n', " ");
    format!("| `{}` | {kind} | {description} |\n", doc.syntax_example)
}

/// A Markdown table of every function: syntax, kind and description.
pub fn markdown_table() -> String {
    let mut out = String::from("| function | kind | what it does |\n| --- | --- | --- |\n");
    for udf in udfs::scalar_udfs() {
        out.push_str(&row("scalar", udf.documentation()));
    }
    for udaf in udfs::aggregate_udfs() {
        out.push_str(&row("aggregate", udaf.documentation()));
    }
    for udwf in udfs::window_udfs() {
        out.push_str(&row("window", udwf.documentation()));
    }
    for doc in crate::tables::table_function_docs() {
        out.push_str(&row("table", Some(doc)));
    }
    out
}
