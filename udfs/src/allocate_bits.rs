//! `allocate_bits(tensor, bytes, error, budget) OVER (PARTITION BY …)`: over an error-curve
//! table (one row per tensor and candidate format, with its exact size and its error), which
//! candidate each tensor takes so that the total error is least and the total size within the
//! budget (the multiple-choice knapsack of `kernels::allocation`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, StructArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Fields, Float64Type, Int64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{Documentation, PartitionEvaluator, Signature, WindowUDFImpl};
use datafusion_functions_window_common::field::WindowUDFFieldArgs;
use datafusion_functions_window_common::partition::PartitionEvaluatorArgs;

use crate::kernels::allocation::{Candidate, allocate};
use crate::support::args::UserDefined;
use crate::support::args::nullable_fields;
use crate::support::args::{ArgType, Parameters};
use crate::support::doc::DOC_QUANTIZATION;
use crate::support::window::{constant_f64, partition_error, result_field};

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocateBits {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUANTIZATION,
        "Bit allocation under a size budget. The rows of the partition are candidates: a \
         tensor (any value naming it), the exact bytes it takes in that candidate's format, and \
         its error there (e.g. Σ(w−ŵ)², importance-weighted). One candidate per tensor is \
         chosen so that the total error is least and the total bytes at most budget: each \
         tensor's candidates are cut to their convex hull, upgrades taken in order of error \
         saved per byte (the LP relaxation, whose value is a lower bound on every choice's \
         error), then repaired by the swaps that still fit. Returns {chosen (true on the one \
         row each tensor takes), total_bytes, total_error, lower_bound (the same on every row \
         of the partition)}. Candidates with a NULL size or error are never chosen. Errors: a \
         tensor without a usable candidate, a negative size, an error that is negative or not \
         finite, a budget below the smallest or above the largest mixture (giving the range \
         the candidates reach), a budget that is not a constant.",
        "allocate_bits(tensor, bytes, error, budget) OVER ([PARTITION BY model])",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, scheme FROM (\n    SELECT layer, scheme, allocate_bits(layer, bytes, err_sq, 12000000) OVER () AS a\n    FROM error_curves) WHERE a['chosen'];\n```",
    )
    .with_argument("tensor", "What names the tensor: rows with the same value are one tensor's candidates.")
    .with_argument("bytes", "The tensor's exact size in this candidate's format, an integer ≥ 0.")
    .with_argument("error", "The tensor's error in this candidate's format, a number ≥ 0.")
    .with_argument("budget", "The most bytes all tensors together may take, a constant.")
    .build()
});

fn fields() -> Fields {
    nullable_fields(&[
        ("chosen", DataType::Boolean),
        ("total_bytes", DataType::UInt64),
        ("total_error", DataType::Float64),
        ("lower_bound", DataType::Float64),
    ])
}

const PARAMETERS: Parameters = Parameters::new(
    &[
        ("tensor", ArgType::Text),
        ("bytes", ArgType::Integer),
        ("error", ArgType::Float),
        ("budget", ArgType::Float),
    ],
    4,
);

impl WindowUDFImpl for AllocateBits {
    fn name(&self) -> &str {
        "allocate_bits"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        // Any value names a tensor: it is compared as its text.
        let mut types = arg_types.to_vec();
        if let Some(tensor) = types.first_mut() {
            *tensor = DataType::Utf8;
        }
        PARAMETERS.coerce(self.name(), &types)
    }

    fn partition_evaluator(
        &self,
        args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        let budget = constant_f64(&args, self.name(), "budget", 3, f64::NAN)?;
        if !(budget.is_finite() && budget >= 0.0 && budget < u64::MAX as f64) {
            return plan_err!(
                "{}: argument 'budget' must be a finite number of bytes ≥ 0, got {budget}",
                self.name()
            );
        }
        Ok(Box::new(AllocateEvaluator {
            budget: budget.floor() as u64,
        }))
    }

    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        result_field(&field_args, DataType::Struct(fields()))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[derive(Debug)]
struct AllocateEvaluator {
    budget: u64,
}

impl PartitionEvaluator for AllocateEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        const NAME: &str = "allocate_bits";
        let tensors = cast(&values[0], &DataType::Utf8)?;
        let tensors = tensors.as_string::<i32>();
        let bytes = values[1].as_primitive::<Int64Type>();
        let errors = values[2].as_primitive::<Float64Type>();

        // Each tensor's usable candidates, in order of first appearance.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut names: Vec<&str> = Vec::new();
        let mut items: Vec<Vec<Candidate>> = Vec::new();
        let mut rows_of: Vec<Vec<usize>> = Vec::new();
        for row in 0..num_rows {
            if tensors.is_null(row) {
                return exec_err!("{NAME}: argument 'tensor' is NULL at row {row}");
            }
            let name = tensors.value(row);
            let item = *index.entry(name).or_insert_with(|| {
                names.push(name);
                items.push(Vec::new());
                rows_of.push(Vec::new());
                names.len() - 1
            });
            if bytes.is_null(row) || errors.is_null(row) {
                continue;
            }
            let (b, e) = (bytes.value(row), errors.value(row));
            let Ok(b) = u64::try_from(b) else {
                return exec_err!("{NAME}: tensor '{name}': bytes {b} is negative");
            };
            if !(e.is_finite() && e >= 0.0) {
                return exec_err!("{NAME}: tensor '{name}': error {e} is not a finite number ≥ 0");
            }
            items[item].push(Candidate { bytes: b, error: e });
            rows_of[item].push(row);
        }
        if let Some(i) = items.iter().position(Vec::is_empty) {
            return exec_err!(
                "{NAME}: tensor '{}' has no candidate with a size and an error",
                names[i]
            );
        }
        let allocation = allocate(&items, self.budget).map_err(|e| partition_error(NAME, e))?;

        let mut chosen = vec![false; num_rows];
        for (rows, &c) in rows_of.iter().zip(&allocation.choice) {
            chosen[rows[c]] = true;
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(BooleanArray::from(chosen)),
            Arc::new(UInt64Array::from(vec![allocation.bytes; num_rows])),
            Arc::new(Float64Array::from(vec![allocation.error; num_rows])),
            Arc::new(Float64Array::from(vec![allocation.lower_bound; num_rows])),
        ];
        Ok(Arc::new(StructArray::try_new(fields(), columns, None)?))
    }
}

crate::support::register::window_udf!(AllocateBits::default());
