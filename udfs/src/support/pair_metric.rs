//! The shape shared by the scalar functions that compare two rows (`cosine_similarity`, `mse`,
//! `sqnr_db`, `max_abs_error`): two float lists in, one Float64 out. Each function's own file
//! supplies its name, its documentation and which figure of [`PairSums`] it reports.

use std::sync::Arc;

use datafusion::arrow::array::Float64Builder;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};

use crate::kernels::metrics::PairSums;
use crate::support::args::{ArgType, FloatRows, Parameters, UserDefined, row_error};

/// What a function over a pair of rows is: its name, the metric it takes from the pair's
/// sums and its documentation. Shared by [`PairMetric`] (per row) and `PairAggregate` (per
/// group of rows).
#[derive(Debug)]
pub struct PairDefinition {
    pub name: &'static str,
    pub metric: fn(&PairSums) -> Option<f64>,
    pub documentation: fn() -> &'static Documentation,
    pub signature: UserDefined,
}

// Functions are told apart by name: two instances with one name are the same function.
impl PartialEq for PairDefinition {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for PairDefinition {}

impl std::hash::Hash for PairDefinition {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl PairDefinition {
    pub fn new(
        name: &'static str,
        metric: fn(&PairSums) -> Option<f64>,
        documentation: fn() -> &'static Documentation,
    ) -> Self {
        Self {
            name,
            metric,
            documentation,
            signature: UserDefined::default(),
        }
    }
}

/// A scalar function of two rows: the metric of each pair.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PairMetric(PairDefinition);

impl PairMetric {
    pub fn new(
        name: &'static str,
        metric: fn(&PairSums) -> Option<f64>,
        documentation: fn() -> &'static Documentation,
    ) -> Self {
        Self(PairDefinition::new(name, metric, documentation))
    }
}

/// `(a, b)`: two float lists.
pub const PAIR: Parameters =
    Parameters::new(&[("a", ArgType::FloatList), ("b", ArgType::FloatList)], 2);

impl ScalarUDFImpl for PairMetric {
    fn name(&self) -> &str {
        self.0.name
    }

    fn signature(&self) -> &Signature {
        &self.0.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        PAIR.coerce(self.0.name, arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = args.args[0].to_array(args.number_rows)?;
        let b = args.args[1].to_array(args.number_rows)?;
        let (a, b) = (
            FloatRows::new(&a, self.0.name, "a")?,
            FloatRows::new(&b, self.0.name, "b")?,
        );
        let mut out = Float64Builder::with_capacity(a.len());
        for row in 0..a.len() {
            match (a.row(row), b.row(row)) {
                (Some(x), Some(y)) => {
                    let sums = PairSums::of(x, y).map_err(|e| row_error(self.0.name, row, e))?;
                    out.append_option((self.0.metric)(&sums));
                }
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some((self.0.documentation)())
    }
}
