//! What the window functions share: their argument types, constant arguments read while
//! planning, and the partition's column as plain `f64` values.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue, plan_err};
use datafusion_functions_window_common::field::WindowUDFFieldArgs;
use datafusion_functions_window_common::partition::PartitionEvaluatorArgs;

use crate::kernels::KernelError;
use crate::kernels::thermo::ChainWeights;
use crate::support::args::constant_value;

/// Default weights of the transition objective's Markov and entropy terms.
pub const DEFAULT_LAMBDA_MARKOV: f64 = 1.0;
pub const DEFAULT_LAMBDA_ENTROPY: f64 = 0.01;

/// The constant value of argument `index`, or a plan error when it is not a constant.
pub fn constant(
    args: &PartitionEvaluatorArgs,
    function: &str,
    argument: &str,
    index: usize,
) -> Result<Option<ScalarValue>> {
    let Some(expr) = args.input_exprs().get(index) else {
        return Ok(None);
    };
    match constant_value(expr) {
        Some(value) if !value.is_null() => Ok(Some(value)),
        _ => plan_err!("{function}: argument '{argument}' must be a non-NULL constant"),
    }
}

/// A constant number argument, or `default` when it is absent.
pub fn constant_f64(
    args: &PartitionEvaluatorArgs,
    function: &str,
    argument: &str,
    index: usize,
    default: f64,
) -> Result<f64> {
    match constant(args, function, argument, index)? {
        None => Ok(default),
        Some(value) => match value.cast_to(&DataType::Float64)? {
            ScalarValue::Float64(Some(v)) => Ok(v),
            other => plan_err!("{function}: argument '{argument}' must be a number, got {other}"),
        },
    }
}

/// A constant string argument, or `None` when it is absent.
pub fn constant_str(
    args: &PartitionEvaluatorArgs,
    function: &str,
    argument: &str,
    index: usize,
) -> Result<Option<String>> {
    match constant(args, function, argument, index)? {
        None => Ok(None),
        Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s))) => Ok(Some(s)),
        Some(ScalarValue::LargeUtf8(Some(s))) => Ok(Some(s)),
        Some(other) => plan_err!("{function}: argument '{argument}' must be a string, got {other}"),
    }
}

/// A window function's result column: nullable, of `data_type`.
pub fn result_field(field_args: &WindowUDFFieldArgs, data_type: DataType) -> Result<FieldRef> {
    Ok(Arc::new(Field::new(field_args.name(), data_type, true)))
}

/// The partition's column as `f64` values, NULLs kept as `None`.
pub fn float_values(array: &ArrayRef) -> Result<Vec<Option<f64>>> {
    let array = cast(array, &DataType::Float64)?;
    let floats = array.as_primitive::<Float64Type>();
    Ok((0..floats.len())
        .map(|i| floats.is_valid(i).then(|| floats.value(i)))
        .collect())
}

/// A plan-time error about an argument.
pub fn window_arg_error(function: &str, argument: &str, error: &KernelError) -> DataFusionError {
    DataFusionError::Plan(format!("{function}: argument '{argument}': {error}"))
}

/// A run-time error about the partition's data.
pub fn partition_error(function: &str, error: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("{function}: {error}"))
}

/// The objective's weights from constant arguments: `bits` at `bits_index`, the optional
/// lambdas after it (shared by thermo_optimize and thermo_objective).
pub fn chain_weights(
    args: &PartitionEvaluatorArgs,
    function: &str,
    bits_index: usize,
) -> Result<ChainWeights> {
    let bits = match constant(args, function, "bits", bits_index)? {
        Some(ScalarValue::Int64(Some(b))) => b,
        other => return plan_err!("{function}: argument 'bits' must be an integer, got {other:?}"),
    };
    let markov = constant_f64(
        args,
        function,
        "lambda_markov",
        bits_index + 1,
        DEFAULT_LAMBDA_MARKOV,
    )?;
    let entropy = constant_f64(
        args,
        function,
        "lambda_entropy",
        bits_index + 2,
        DEFAULT_LAMBDA_ENTROPY,
    )?;
    ChainWeights::new(bits, markov, entropy).map_err(|e| {
        let argument = if (2..=8).contains(&bits) {
            "lambda"
        } else {
            "bits"
        };
        window_arg_error(function, argument, &e)
    })
}
