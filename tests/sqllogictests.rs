//! Runs the `.slt` files under `tests/sqllogictest/` against a real DataFusion session with
//! every ArrowQuant function registered. One test per file, so `cargo test` names the family
//! that fails.

use std::path::Path;

use arrowquant::session;
use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::DataFusionError;
use datafusion::prelude::SessionContext;
use sqllogictest::{DBOutput, DefaultColumnType, Runner};

struct Db {
    ctx: SessionContext,
}

#[derive(Debug)]
struct SqlError(DataFusionError);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.strip_backtrace())
    }
}

impl std::error::Error for SqlError {}

fn column_type(dt: &DataType) -> DefaultColumnType {
    if dt.is_integer() {
        DefaultColumnType::Integer
    } else if dt.is_floating() {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let df = self.ctx.sql(sql).await.map_err(SqlError)?;
        let schema = df.schema().as_arrow().clone();
        let batches = df.collect().await.map_err(SqlError)?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &batches {
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SqlError(e.into()))?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .zip(batch.columns())
                        .map(|(f, c)| {
                            let text = f.value(row).to_string();
                            if text.is_empty() && c.is_valid(row) {
                                "(empty)".to_string()
                            } else {
                                text
                            }
                        })
                        .collect(),
                );
            }
        }
        let types = schema
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "arrowquant"
    }
}

async fn run_slt(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sqllogictest")
        .join(name);
    let mut runner = Runner::new(|| async {
        Ok(Db {
            ctx: session::context(),
        })
    });
    if std::env::var_os("ARROWQUANT_SLT_COMPLETE").is_some() {
        // Rewrites the expected results from what the engine returns: review the diff.
        runner
            .update_test_file(
                &path,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::default_column_validator,
            )
            .await
            .unwrap();
        return;
    }
    if let Err(e) = runner.run_file_async(&path).await {
        panic!("{}:\n{e}", path.display());
    }
}

macro_rules! slt {
    ($test:ident, $file:literal) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            run_slt($file).await;
        }
    };
}

slt!(quantize, "quantize.slt");
slt!(gguf, "gguf.slt");
slt!(gguf_files, "gguf_files.slt");
slt!(quality, "quality.slt");
slt!(statistics, "statistics.slt");
slt!(aggregates, "aggregates.slt");
slt!(catalogue, "catalogue.slt");
slt!(safetensors, "safetensors.slt");
slt!(timesteps, "timesteps.slt");
slt!(thermo, "thermo.slt");
slt!(spatial, "spatial.slt");
slt!(measured, "measured.slt");
slt!(allocation, "allocation.slt");
