//! The `(weights, bits [, group_size [, scheme]])` arguments that `quantize` and
//! `quant_error` share: their planning types, their validation when literal, and reading
//! them per row when they are columns (as when a strategy table joined to the weights gives
//! each row its own bit width).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::ColumnarValue;

use crate::kernels::KernelError;
use crate::kernels::scheme::{GroupSize, QuantSpec, Scheme};
use crate::support::args::{
    IntArg, StrArg, arg_error, check_arity, coerce_float_list, coerce_integer, coerce_string,
    literal,
};

pub const FORMS: &str = "(weights, bits [, group_size [, scheme]])";

/// Planning types: weights stay as they are, bits become Int64, group_size Int64 (or Utf8 for
/// 'row'), scheme Utf8.
pub fn coerce(function: &str, arg_types: &[DataType]) -> Result<Vec<DataType>> {
    check_arity(function, FORMS, arg_types.len(), 2, 4)?;
    let mut out = vec![
        coerce_float_list(function, "weights", &arg_types[0])?,
        coerce_integer(function, "bits", &arg_types[1])?,
    ];
    if let Some(group) = arg_types.get(2) {
        out.push(
            if matches!(
                group,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) {
                DataType::Utf8
            } else {
                coerce_integer(function, "group_size", group)?
            },
        );
    }
    if let Some(scheme) = arg_types.get(3) {
        out.push(coerce_string(function, "scheme", scheme)?);
    }
    Ok(out)
}

fn group_of_literal(value: &ScalarValue) -> Option<std::result::Result<GroupSize, KernelError>> {
    match value {
        ScalarValue::Int64(Some(g)) => Some(GroupSize::from_i64(*g)),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(GroupSize::parse(s)),
        v if v.is_null() => None,
        ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::UInt64(_) => {
            let g = value.cast_to(&DataType::Int64).ok()?;
            group_of_literal(&g)
        }
        _ => None,
    }
}

fn int_literal(value: &ScalarValue) -> Option<i64> {
    if value.is_null() {
        return None;
    }
    match value.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(v) => v,
        _ => None,
    }
}

fn str_literal(value: &ScalarValue) -> Option<&str> {
    match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s),
        _ => None,
    }
}

/// Refuses bad literal arguments while planning, naming the argument.
pub fn validate_literals(function: &str, scalars: &[Option<&ScalarValue>]) -> Result<()> {
    let scheme = match literal(scalars, 3).and_then(str_literal) {
        Some(name) => Some(Scheme::parse(name).map_err(|e| arg_error(function, "scheme", &e))?),
        None => None,
    };
    let group = match literal(scalars, 2).and_then(group_of_literal) {
        Some(g) => Some(g.map_err(|e| arg_error(function, "group_size", &e))?),
        None => None,
    };
    if let Some(bits) = literal(scalars, 1).and_then(int_literal) {
        QuantSpec::new(bits, group, scheme.unwrap_or(Scheme::Asym)).map_err(|e| {
            let argument = match e {
                KernelError::SchemeGroup { .. } => "group_size",
                _ => "bits",
            };
            arg_error(function, argument, &e)
        })?;
    } else if let (Some(scheme), Some(group)) = (scheme, group)
        && let Some(format) = scheme.gguf()
    {
        QuantSpec::new(i64::from(format.bits()), Some(group), scheme)
            .map_err(|e| arg_error(function, "group_size", &e))?;
    }
    if let Some(v) = literal(scalars, 2)
        && !v.is_null()
        && group_of_literal(v).is_none()
    {
        return plan_err!("{function}: argument 'group_size' must be an integer or 'row', got {v}");
    }
    Ok(())
}

enum GroupArg {
    Default,
    Int(IntArg),
    Str(StrArg),
}

/// The spec arguments of one batch, read per row (a literal is parsed once).
pub struct SpecArgs {
    bits: IntArg,
    group: GroupArg,
    scheme: Option<StrArg>,
    all_literal: bool,
    cached: Option<Option<QuantSpec>>,
}

impl SpecArgs {
    pub fn new(args: &[ColumnarValue]) -> Result<Self> {
        let group = match args.get(2) {
            None => GroupArg::Default,
            Some(v) if v.data_type() == DataType::Utf8 => GroupArg::Str(StrArg::new(v)?),
            Some(v) => GroupArg::Int(IntArg::new(v)?),
        };
        let all_literal = args[1..]
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        Ok(SpecArgs {
            bits: IntArg::new(&args[1])?,
            group,
            scheme: args.get(3).map(StrArg::new).transpose()?,
            all_literal,
            cached: None,
        })
    }

    /// The spec for `row`; `Ok(None)` when an argument is NULL (the result is then NULL).
    pub fn spec(&mut self, row: usize) -> std::result::Result<Option<QuantSpec>, KernelError> {
        if let Some(cached) = self.cached {
            return Ok(cached);
        }
        let spec = self.read(row)?;
        if self.all_literal {
            self.cached = Some(spec);
        }
        Ok(spec)
    }

    fn read(&self, row: usize) -> std::result::Result<Option<QuantSpec>, KernelError> {
        let Some(bits) = self.bits.get(row) else {
            return Ok(None);
        };
        let group = match &self.group {
            GroupArg::Default => None,
            GroupArg::Int(g) => match g.get(row) {
                Some(g) => Some(GroupSize::from_i64(g)?),
                None => return Ok(None),
            },
            GroupArg::Str(g) => match g.get(row) {
                Some(g) => Some(GroupSize::parse(g)?),
                None => return Ok(None),
            },
        };
        let scheme = match &self.scheme {
            None => Scheme::Asym,
            Some(s) => match s.get(row) {
                Some(name) => Scheme::parse(name)?,
                None => return Ok(None),
            },
        };
        QuantSpec::new(bits, group, scheme).map(Some)
    }
}
