//! The `(weights, bits [, group_size [, scheme]])` arguments that `quantize`,
//! `quantize_measured` and `quant_error` share: their planning types, their validation when
//! literal, and reading them per row ([`QuantRows`]: each row's values with its setting) when
//! they are columns (as when a strategy table joined to the weights gives each row its own bit
//! width).

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs};

use crate::kernels::KernelError;
use crate::kernels::scheme::{GroupSize, QuantSpec, Scheme};
use crate::support::args::{ArgType, Parameters};
use crate::support::args::{FloatRows, IntArg, StrArg, arg_error, literal, row_error};

/// What the `importance` argument is, for the functions' documentation.
pub const IMPORTANCE_DOC: &str = "One weight ≥ 0 per value of the row (a list as long as weights, e.g. an importance matrix's per-column mean squares of the layer's input): the search encoder of the GGUF block formats minimises Σ importance·(w − ŵ)² instead of Σ (w − ŵ)². NULL: none. Refused for the affine schemes and the reference encoder.";

/// Planning types: weights stay as they are, bits become Int64, group_size Int64 (or Utf8 for
/// 'row'), scheme Utf8.
pub const QUANT_ARGS: Parameters = Parameters::new(
    &[
        ("weights", ArgType::FloatList),
        ("bits", ArgType::Integer),
        ("group_size", ArgType::GroupSize),
        ("scheme", ArgType::Text),
        ("importance", ArgType::FloatList),
    ],
    2,
);

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
        Some(name) => {
            Some(Scheme::parse_with_encoder(name).map_err(|e| arg_error(function, "scheme", &e))?)
        }
        None => None,
    };
    let group = match literal(scalars, 2).and_then(group_of_literal) {
        Some(g) => Some(g.map_err(|e| arg_error(function, "group_size", &e))?),
        None => None,
    };
    if let Some(bits) = literal(scalars, 1).and_then(int_literal) {
        let (scheme, _) = scheme.unwrap_or((Scheme::Asym, Default::default()));
        QuantSpec::new(bits, group, scheme).map_err(|e| {
            let argument = match e {
                KernelError::SchemeGroup { .. } => "group_size",
                _ => "bits",
            };
            arg_error(function, argument, &e)
        })?;
    } else if let (Some((scheme, _)), Some(group)) = (scheme, group)
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

/// The `importance` argument (`args[4]`) of a quantize-style call as an array, when given.
pub fn importance_array(args: &ScalarFunctionArgs) -> Result<Option<ArrayRef>> {
    args.args
        .get(4)
        .map(|a| a.to_array(args.number_rows))
        .transpose()
}

/// The rows of one batch of a quantize-style call, each with its setting.
pub struct QuantRows<'a> {
    function: &'a str,
    rows: FloatRows<'a>,
    specs: SpecArgs,
    importance: Option<FloatRows<'a>>,
}

/// One row to quantize: its values, its setting, and the importance of each value when given.
pub struct QuantRow<'r> {
    pub values: &'r [f32],
    pub spec: QuantSpec,
    pub importance: Option<&'r [f32]>,
}

impl<'a> QuantRows<'a> {
    /// `weights` is `args[0]` as an array; the setting comes from `args[1..]`.
    /// `importance`, when given, is `args[4]` as an array.
    pub fn new(
        function: &'a str,
        weights: &'a ArrayRef,
        args: &[ColumnarValue],
        importance: Option<&'a ArrayRef>,
    ) -> Result<Self> {
        Ok(QuantRows {
            function,
            rows: FloatRows::new(weights, function, "weights")?,
            specs: SpecArgs::new(args)?,
            importance: importance
                .map(|a| FloatRows::new(a, function, "importance"))
                .transpose()?,
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Row `row`'s values and setting; `None` when the values or an argument are NULL (the
    /// result is then NULL). A bad setting is an error naming the function and the row.
    /// A NULL importance list quantizes the row without one.
    pub fn get(&mut self, row: usize) -> Result<Option<QuantRow<'_>>> {
        let spec = self
            .specs
            .spec(row)
            .map_err(|e| row_error(self.function, row, e))?;
        let importance = self.importance.as_ref().and_then(|i| i.row(row));
        Ok(self.rows.row(row).zip(spec).map(|(values, spec)| QuantRow {
            values,
            spec,
            importance,
        }))
    }
}

/// The spec arguments of one batch, read per row (a literal is parsed once).
struct SpecArgs {
    bits: IntArg,
    group: GroupArg,
    scheme: Option<StrArg>,
    all_literal: bool,
    cached: Option<Option<QuantSpec>>,
}

impl SpecArgs {
    fn new(args: &[ColumnarValue]) -> Result<Self> {
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
    fn spec(&mut self, row: usize) -> std::result::Result<Option<QuantSpec>, KernelError> {
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
        let (scheme, encoder) = match &self.scheme {
            None => (Scheme::Asym, Default::default()),
            Some(s) => match s.get(row) {
                Some(name) => Scheme::parse_with_encoder(name)?,
                None => return Ok(None),
            },
        };
        QuantSpec::new(bits, group, scheme)?
            .with_encoder(encoder)
            .map(Some)
    }
}
