//! The Arrow plumbing every SQL function shares, written once: the signature, each function's
//! parameter table ([`Parameters`]: arity, planning types, the forms errors quote), which list
//! types are accepted, turning a list column into rows of `&[f32]`, reading literal and column
//! arguments, and one error style.

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{
    DataType, Field, Fields, Float16Type, Float32Type, Float64Type, Int64Type,
};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_datafusion_err, plan_err};
use datafusion::logical_expr::{ColumnarValue, Signature, Volatility};

use crate::kernels::KernelError;
use crate::layout::quantized::coerce_quantized;

/// The signature every ArrowQuant function has: `user_defined` (each function checks and
/// coerces its own arguments in `coerce_types`, so that errors name the argument) and
/// immutable. A field of this type lets a function derive `Default`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UserDefined(Signature);

impl Default for UserDefined {
    fn default() -> Self {
        UserDefined(Signature::user_defined(Volatility::Immutable))
    }
}

impl std::ops::Deref for UserDefined {
    type Target = Signature;
    fn deref(&self) -> &Signature {
        &self.0
    }
}

/// An error about one row's data, naming the function and the row within the batch.
pub fn row_error(function: &str, row: usize, error: impl std::fmt::Display) -> DataFusionError {
    exec_datafusion_err!("{function}: row {row}: {error}")
}

/// A kernel error about a literal argument, refused while planning.
pub fn arg_error(function: &str, argument: &str, error: &KernelError) -> DataFusionError {
    DataFusionError::Plan(format!("{function}: argument '{argument}': {error}"))
}

// ---------------------------------------------------------------------------------------------
// Argument types.

fn is_float(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Float16 | DataType::Float32 | DataType::Float64
    )
}

/// The type a list-of-numbers argument is planned as: float lists stay as they are (they are
/// read without a cast), other numeric lists are cast to `List<Float32>`, anything else is a
/// plan error naming the function, the argument and the types accepted.
pub fn coerce_float_list(function: &str, argument: &str, dt: &DataType) -> Result<DataType> {
    let item = match dt {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => f.data_type(),
        DataType::Null => return Ok(float32_list()),
        _ => {
            return plan_err!(
                "{function}: argument '{argument}' must be a List, LargeList or FixedSizeList of Float16, Float32 or Float64, got {dt}"
            );
        }
    };
    if is_float(item) {
        Ok(dt.clone())
    } else if item.is_numeric() || matches!(item, DataType::Null) {
        Ok(float32_list())
    } else {
        plan_err!(
            "{function}: argument '{argument}' must be a list of Float16, Float32 or Float64 values, got a list of {item}"
        )
    }
}

/// The fields of a result struct, every one nullable.
pub fn nullable_fields(fields: &[(&str, DataType)]) -> Fields {
    fields
        .iter()
        .map(|(name, data_type)| Field::new(*name, data_type.clone(), true))
        .collect()
}

pub fn float32_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true)))
}

/// Integer arguments are planned as Int64.
pub fn coerce_integer(function: &str, argument: &str, dt: &DataType) -> Result<DataType> {
    if dt.is_integer() || matches!(dt, DataType::Null) {
        Ok(DataType::Int64)
    } else {
        plan_err!("{function}: argument '{argument}' must be an integer, got {dt}")
    }
}

/// Numeric arguments are planned as Float64.
pub fn coerce_float(function: &str, argument: &str, dt: &DataType) -> Result<DataType> {
    if dt.is_numeric() || matches!(dt, DataType::Null) {
        Ok(DataType::Float64)
    } else {
        plan_err!("{function}: argument '{argument}' must be a number, got {dt}")
    }
}

/// String arguments are planned as Utf8.
pub fn coerce_string(function: &str, argument: &str, dt: &DataType) -> Result<DataType> {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
            Ok(DataType::Utf8)
        }
        _ => plan_err!("{function}: argument '{argument}' must be a string, got {dt}"),
    }
}

/// What an argument is planned as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgType {
    /// A list of numbers ([`coerce_float_list`]).
    FloatList,
    /// A number, planned as Float64.
    Float,
    /// An integer, planned as Int64.
    Integer,
    /// A string, planned as Utf8.
    Text,
    /// A group size: an integer, or a string such as 'row'.
    GroupSize,
    /// A quantized value, the struct `quantize` returns.
    Quantized,
}

impl ArgType {
    fn coerce(self, function: &str, argument: &str, dt: &DataType) -> Result<DataType> {
        match self {
            ArgType::FloatList => coerce_float_list(function, argument, dt),
            ArgType::Float => coerce_float(function, argument, dt),
            ArgType::Integer => coerce_integer(function, argument, dt),
            ArgType::Text => coerce_string(function, argument, dt),
            ArgType::GroupSize => match dt {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(DataType::Utf8),
                _ => coerce_integer(function, argument, dt),
            },
            ArgType::Quantized => coerce_quantized(function, argument, dt),
        }
    }
}

/// A function's parameters in order, the first `required` of them required and the rest
/// optional from the right: the one table its arity check, its planning types and the forms
/// its errors quote come from.
#[derive(Debug)]
pub struct Parameters {
    pub list: &'static [(&'static str, ArgType)],
    pub required: usize,
}

impl Parameters {
    pub const fn new(list: &'static [(&'static str, ArgType)], required: usize) -> Self {
        assert!(required <= list.len());
        Parameters { list, required }
    }

    /// The call's forms as errors quote them: `(values, bits [, scheme [, group]])`.
    pub fn forms(&self) -> String {
        self.to_string()
    }

    /// Checks the number of arguments and plans each one's type, errors naming the argument.
    pub fn coerce(&self, function: &str, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        check_arity(
            function,
            self,
            arg_types.len(),
            self.required,
            self.list.len(),
        )?;
        self.list
            .iter()
            .zip(arg_types)
            .map(|((name, kind), dt)| kind.coerce(function, name, dt))
            .collect()
    }
}

/// The forms, written where an error needs them (no string is built otherwise).
impl std::fmt::Display for Parameters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(")?;
        for (i, (name, _)) in self.list.iter().enumerate() {
            match i {
                0 if self.required == 0 => write!(f, "[{name}")?,
                0 => f.write_str(name)?,
                _ if i < self.required => write!(f, ", {name}")?,
                _ => write!(f, " [, {name}")?,
            }
        }
        for _ in self.required..self.list.len() {
            f.write_str("]")?;
        }
        f.write_str(")")
    }
}

/// Checks the number of arguments, naming the function's forms.
pub fn check_arity(
    function: &str,
    forms: impl std::fmt::Display,
    got: usize,
    min: usize,
    max: usize,
) -> Result<()> {
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        plan_err!("{function} takes {forms}; got {got} argument(s)")
    }
}

// ---------------------------------------------------------------------------------------------
// Lists of floats as rows of f32 slices.

/// A list column seen as rows of `&[f32]`: borrowed when the values are already f32,
/// converted once per batch otherwise (never per row).
pub struct FloatRows<'a> {
    values: Cow<'a, [f32]>,
    offsets: Vec<usize>,
    nulls: Option<NullBuffer>,
}

impl<'a> FloatRows<'a> {
    pub fn new(array: &'a ArrayRef, function: &str, argument: &str) -> Result<Self> {
        let (values, offsets, nulls): (&ArrayRef, Vec<usize>, _) = match array.data_type() {
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                let o = list.value_offsets().iter().map(|&o| o as usize).collect();
                (list.values(), o, list.logical_nulls())
            }
            DataType::LargeList(_) => {
                let list = array.as_list::<i64>();
                let o = list.value_offsets().iter().map(|&o| o as usize).collect();
                (list.values(), o, list.logical_nulls())
            }
            DataType::FixedSizeList(_, size) => {
                let list = array.as_fixed_size_list();
                let size = *size as usize;
                let start = list.offset() * size;
                let o = (0..=list.len()).map(|i| start + i * size).collect();
                (list.values(), o, list.logical_nulls())
            }
            DataType::Null => {
                let n = array.len();
                return Ok(FloatRows {
                    values: Cow::Owned(Vec::new()),
                    offsets: vec![0; n + 1],
                    nulls: Some(NullBuffer::new_null(n)),
                });
            }
            other => {
                return Err(exec_datafusion_err!(
                    "{function}: argument '{argument}' must be a list of floats, got {other}"
                ));
            }
        };
        let converted: Cow<'a, [f32]> = match values.data_type() {
            DataType::Float32 => Cow::Borrowed(values.as_primitive::<Float32Type>().values()),
            DataType::Float16 => Cow::Owned(
                values
                    .as_primitive::<Float16Type>()
                    .values()
                    .iter()
                    .map(|v| v.to_f32())
                    .collect(),
            ),
            DataType::Float64 => {
                let wide = values.as_primitive::<Float64Type>().values();
                // A finite value beyond f32 would become ±inf and be misreported (or
                // worse, measured) downstream: found here, named with its row.
                let mut beyond = false;
                let narrow = wide
                    .iter()
                    .map(|&v| {
                        let f = v as f32;
                        beyond |= f.is_infinite() & v.is_finite();
                        f
                    })
                    .collect();
                if beyond {
                    beyond_f32(function, argument, wide, &offsets, nulls.as_ref())?;
                }
                Cow::Owned(narrow)
            }
            other => {
                return Err(exec_datafusion_err!(
                    "{function}: argument '{argument}' must be a list of floats, got a list of {other}"
                ));
            }
        };
        let rows = FloatRows {
            values: converted,
            offsets,
            nulls,
        };
        if let Some(element_nulls) = values.logical_nulls() {
            for row in 0..rows.len() {
                if rows.is_valid(row) {
                    let (start, end) = (rows.offsets[row], rows.offsets[row + 1]);
                    if (start..end).any(|i| element_nulls.is_null(i)) {
                        return Err(row_error(
                            function,
                            row,
                            format!("argument '{argument}' contains a NULL element"),
                        ));
                    }
                }
            }
        }
        Ok(rows)
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn is_valid(&self, row: usize) -> bool {
        self.nulls.as_ref().is_none_or(|n| n.is_valid(row))
    }

    /// The row's values, or `None` for a NULL row.
    pub fn row(&self, row: usize) -> Option<&[f32]> {
        self.is_valid(row)
            .then(|| &self.values[self.offsets[row]..self.offsets[row + 1]])
    }
}

/// The error for the first value of a valid row of `values` (Float64) that f32 cannot hold.
fn beyond_f32(
    function: &str,
    argument: &str,
    values: &[f64],
    offsets: &[usize],
    nulls: Option<&NullBuffer>,
) -> Result<()> {
    for row in 0..offsets.len() - 1 {
        if nulls.is_some_and(|n| n.is_null(row)) {
            continue;
        }
        let (start, end) = (offsets[row], offsets[row + 1]);
        if let Some(i) = values[start..end]
            .iter()
            .position(|v| v.is_finite() && (*v as f32).is_infinite())
        {
            return Err(row_error(
                function,
                row,
                format!(
                    "argument '{argument}': value {:e} at index {i} is beyond the range of Float32 (±3.4e38)",
                    values[start + i]
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scalar-or-column arguments.

/// An Int64 argument, a literal read once or a column read per row.
pub enum IntArg {
    Scalar(Option<i64>),
    Column(Int64Array),
}

impl IntArg {
    pub fn new(value: &ColumnarValue) -> Result<Self> {
        Ok(match value {
            ColumnarValue::Scalar(ScalarValue::Int64(v)) => IntArg::Scalar(*v),
            ColumnarValue::Scalar(ScalarValue::Null) => IntArg::Scalar(None),
            ColumnarValue::Array(a) if a.data_type() == &DataType::Int64 => {
                IntArg::Column(a.as_primitive::<Int64Type>().clone())
            }
            other => {
                return Err(exec_datafusion_err!(
                    "expected an Int64 argument, got {}",
                    other.data_type()
                ));
            }
        })
    }

    pub fn get(&self, row: usize) -> Option<i64> {
        match self {
            IntArg::Scalar(v) => *v,
            IntArg::Column(a) => a.is_valid(row).then(|| a.value(row)),
        }
    }
}

/// A Utf8 argument, a literal read once or a column read per row.
pub enum StrArg {
    Scalar(Option<String>),
    Column(StringArray),
}

impl StrArg {
    pub fn new(value: &ColumnarValue) -> Result<Self> {
        Ok(match value {
            ColumnarValue::Scalar(ScalarValue::Utf8(v)) => StrArg::Scalar(v.clone()),
            ColumnarValue::Scalar(ScalarValue::Null) => StrArg::Scalar(None),
            ColumnarValue::Array(a) if a.data_type() == &DataType::Utf8 => {
                StrArg::Column(a.as_string::<i32>().clone())
            }
            other => {
                return Err(exec_datafusion_err!(
                    "expected a Utf8 argument, got {}",
                    other.data_type()
                ));
            }
        })
    }

    pub fn get(&self, row: usize) -> Option<&str> {
        match self {
            StrArg::Scalar(v) => v.as_deref(),
            StrArg::Column(a) => a.is_valid(row).then(|| a.value(row)),
        }
    }
}

/// The literal value of argument `index` while planning, if it is one.
pub fn literal<'a>(scalars: &[Option<&'a ScalarValue>], index: usize) -> Option<&'a ScalarValue> {
    scalars.get(index).copied().flatten()
}

/// A builder of `List<Float32>` rows with the list field every function returns.
pub fn float32_list_builder(
    rows: usize,
) -> datafusion::arrow::array::ListBuilder<datafusion::arrow::array::Float32Builder> {
    datafusion::arrow::array::ListBuilder::with_capacity(
        datafusion::arrow::array::Float32Builder::new(),
        rows,
    )
    .with_field(Arc::new(Field::new_list_field(DataType::Float32, true)))
}

/// A `List<Float32>` column of `rows` rows, row `i` made by `make(i, &mut values)`: `Ok(true)`
/// appends what it left in `values` (one scratch vector reused by every row), `Ok(false)` a
/// NULL row; an error names the function and the row.
pub fn float32_list_rows<E: std::fmt::Display>(
    function: &str,
    rows: usize,
    mut make: impl FnMut(usize, &mut Vec<f32>) -> std::result::Result<bool, E>,
) -> Result<ColumnarValue> {
    let mut out = float32_list_builder(rows);
    let mut values = Vec::new();
    for row in 0..rows {
        if make(row, &mut values).map_err(|e| row_error(function, row, e))? {
            out.values().append_slice(&values);
            out.append(true);
        } else {
            out.append(false);
        }
    }
    Ok(ColumnarValue::Array(Arc::new(out.finish())))
}

/// The value of a constant argument: a `Literal`, or, across `datafusion-ffi` where physical
/// expressions arrive opaque, any expression that evaluates to a scalar without reading a
/// column (a column reference fails its bounds check on a batch with no columns).
pub fn constant_value(
    expr: &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
) -> Option<ScalarValue> {
    use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
    use datafusion::arrow::datatypes::Schema;
    use datafusion::physical_expr::expressions::Literal;
    if let Some(literal) = expr.downcast_ref::<Literal>() {
        return Some(literal.value().clone());
    }
    let options = RecordBatchOptions::new().with_row_count(Some(1));
    let batch =
        RecordBatch::try_new_with_options(Arc::new(Schema::empty()), vec![], &options).ok()?;
    match expr.evaluate(&batch) {
        Ok(ColumnarValue::Scalar(value)) => Some(value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{FixedSizeListArray, Float32Array, LargeListArray, ListArray};
    use datafusion::arrow::buffer::OffsetBuffer;

    fn rows_of(array: ArrayRef) -> Vec<Option<Vec<f32>>> {
        let rows = FloatRows::new(&array, "f", "x").unwrap();
        (0..rows.len())
            .map(|i| rows.row(i).map(<[f32]>::to_vec))
            .collect()
    }

    #[test]
    fn parameters_quote_their_forms_and_plan_each_argument() {
        const P: Parameters = Parameters::new(
            &[
                ("values", ArgType::FloatList),
                ("bits", ArgType::Integer),
                ("group", ArgType::GroupSize),
                ("scheme", ArgType::Text),
            ],
            2,
        );
        assert_eq!(P.forms(), "(values, bits [, group [, scheme]])");
        assert_eq!(
            Parameters::new(&[("q", ArgType::Quantized)], 1).forms(),
            "(q)"
        );
        assert_eq!(
            Parameters::new(&[("x", ArgType::Float), ("y", ArgType::Float)], 0).forms(),
            "([x [, y]])"
        );
        let planned = P
            .coerce("f", &[float32_list(), DataType::Int32, DataType::Utf8View])
            .unwrap();
        assert_eq!(planned, [float32_list(), DataType::Int64, DataType::Utf8]);
        let planned = P
            .coerce("f", &[float32_list(), DataType::Null, DataType::UInt8])
            .unwrap();
        assert_eq!(planned, [float32_list(), DataType::Int64, DataType::Int64]);
        let few = P.coerce("f", &[float32_list()]).unwrap_err().to_string();
        assert!(
            few.contains("f takes (values, bits [, group [, scheme]]); got 1 argument(s)"),
            "{few}"
        );
        let wrong = P
            .coerce("f", &[float32_list(), DataType::Float32])
            .unwrap_err()
            .to_string();
        assert!(
            wrong.contains("f: argument 'bits' must be an integer, got Float32"),
            "{wrong}"
        );
    }

    #[test]
    fn sliced_lists_read_the_right_values() {
        let values = Arc::new(Float32Array::from(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let item = Arc::new(Field::new_list_field(DataType::Float32, true));
        let list = ListArray::new(
            Arc::clone(&item),
            OffsetBuffer::from_lengths([2, 1, 3]),
            values.clone(),
            Some(NullBuffer::from(vec![true, false, true])),
        );
        let sliced: ArrayRef = Arc::new(list.slice(1, 2));
        assert_eq!(rows_of(sliced), vec![None, Some(vec![4.0, 5.0, 6.0])]);

        let large = LargeListArray::new(
            Arc::clone(&item),
            OffsetBuffer::from_lengths([3, 3]),
            values.clone(),
            None,
        );
        assert_eq!(
            rows_of(Arc::new(large.slice(1, 1))),
            vec![Some(vec![4.0, 5.0, 6.0])]
        );

        let fixed = FixedSizeListArray::new(item, 2, values, None);
        assert_eq!(
            rows_of(Arc::new(fixed.slice(2, 1))),
            vec![Some(vec![5.0, 6.0])]
        );
    }

    #[test]
    fn null_elements_inside_a_row_are_an_error() {
        let values = Arc::new(Float32Array::from(vec![Some(1.0), None, Some(3.0)]));
        let item = Arc::new(Field::new_list_field(DataType::Float32, true));
        let list: ArrayRef = Arc::new(ListArray::new(
            item,
            OffsetBuffer::from_lengths([1, 2]),
            values,
            None,
        ));
        let err = FloatRows::new(&list, "quantize", "weights").err().unwrap();
        assert!(
            err.to_string()
                .contains("quantize: row 1: argument 'weights' contains a NULL element"),
            "{err}"
        );
    }
}
