//! `read_safetensors('path')`: the weights table of a model, read from its safetensors files.

use std::sync::{Arc, LazyLock};

use arrowquant_udfs::support::doc::DOC_TABLES;
use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Documentation, Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};

use super::scan::{SafetensorsPartition, plan_units, split_units, weights_schema};
use super::{path_argument, select_tensors, tensor_filter_pushdown, tensor_filters};
use crate::model::{Model, dtype_name};

/// The table function.
#[derive(Debug, Default)]
pub struct ReadSafetensors;

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_TABLES,
        "The weights table of a model: one row per tensor row {layer, row, shape, dtype, weights \
         List<Float32>, data (the row's bytes as stored)}. path is a .safetensors file, a \
         *.safetensors.index.json, a model folder or a diffusers pipeline folder (tensors named \
         component.tensor). Memory-mapped; F32 zero-copy where aligned, F16 and BF16 widened \
         exactly, F64 narrowed; weights is NULL for integer and bool tensors. Filters on layer \
         and dtype are pushed down. Corrupt files are refused with the file and tensor named.",
        "read_safetensors(path)",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, row, quantize(weights, 4) AS q FROM read_safetensors('model.safetensors');\n```",
    )
    .with_argument(
        "path",
        "A string literal: a safetensors file, shard index, model folder or pipeline folder.",
    )
    .build()
});

impl ReadSafetensors {
    /// What the catalogue and the README say of this function.
    pub fn documentation() -> &'static Documentation {
        &DOCUMENTATION
    }
}

impl TableFunctionImpl for ReadSafetensors {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let path = path_argument("read_safetensors", &args)?;
        let model = crate::open_model(&path)?;
        Ok(Arc::new(SafetensorsTable::new(Arc::new(model))))
    }
}

/// A model's tensors as the weights table. Filters on `layer` and `dtype` are pushed down, so a
/// query about a few tensors never touches the others' pages.
#[derive(Debug)]
pub struct SafetensorsTable {
    model: Arc<Model>,
    schema: SchemaRef,
}

impl SafetensorsTable {
    pub fn new(model: Arc<Model>) -> Self {
        Self {
            model,
            schema: weights_schema(),
        }
    }

    /// Tensors passing every pushed-down filter.
    fn selected_tensors(&self, state: &dyn Session, filters: &[Expr]) -> Result<Vec<usize>> {
        let tensors = &self.model.tensors;
        select_tensors(
            state,
            filters,
            tensors.iter().map(|t| t.layer.as_str()),
            tensors.iter().map(|t| dtype_name(t.meta.dtype)),
        )
    }
}

/// Arrow list and binary rows use 32-bit offsets: a row (one index of a tensor's first
/// dimension) must stay under 2 GiB of values and bytes.
fn check_row_sizes(model: &Model, tensors: &[usize]) -> Result<()> {
    const LIMIT: usize = i32::MAX as usize;
    for &i in tensors {
        let t = &model.tensors[i];
        let (_, per_row) = crate::model::row_layout(&t.meta.shape);
        let bytes = (per_row * t.meta.dtype.bitsize()).div_ceil(8);
        if per_row.saturating_mul(4) > LIMIT || bytes > LIMIT {
            return Err(datafusion::common::DataFusionError::Plan(format!(
                "tensor '{}' (shape {:?}): rows of {per_row} values are over the 2 GiB a row \
                 can hold",
                t.layer, t.meta.shape
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl TableProvider for SafetensorsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(tensor_filter_pushdown(filters))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let pushed = tensor_filters(filters);
        let tensors = self.selected_tensors(state, &pushed)?;
        check_row_sizes(&self.model, &tensors)?;
        let options = state.config_options();
        let units = plan_units(&self.model, &tensors, options.execution.batch_size.get());
        let parts = split_units(&self.model, units, options.execution.target_partitions);
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let projected = Arc::new(self.schema.project(&projection)?);
        let partitions: Vec<Arc<dyn PartitionStream>> = parts
            .into_iter()
            .map(|units| {
                Arc::new(SafetensorsPartition {
                    model: self.model.clone(),
                    units,
                    projection: projection.clone(),
                    schema: projected.clone(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        let partitions = if partitions.is_empty() {
            vec![Arc::new(SafetensorsPartition {
                model: self.model.clone(),
                units: Vec::new(),
                projection,
                schema: projected.clone(),
            }) as Arc<dyn PartitionStream>]
        } else {
            partitions
        };
        Ok(Arc::new(StreamingTableExec::try_new(
            projected,
            partitions,
            None,
            [],
            false,
            None,
        )?))
    }
}
