//! The shape shared by the aggregates that compare two columns of rows over a whole tensor
//! (`tensor_cosine`, `tensor_mse`): the sums of [`PairSums`] are the state, so partitions
//! merge exactly. Per-row cosines do not add up to a tensor's cosine; these sums do.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, UInt64Type};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Documentation, Signature};

use crate::kernels::metrics::PairSums;
use crate::support::args::FloatRows;
use crate::support::pair_metric::{PAIR, PairDefinition};

/// An aggregate function of two rows: the metric of all the pairs of a group.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PairAggregate(PairDefinition);

impl PairAggregate {
    pub fn new(
        name: &'static str,
        metric: fn(&PairSums) -> Option<f64>,
        documentation: fn() -> &'static Documentation,
    ) -> Self {
        Self(PairDefinition::new(name, metric, documentation))
    }
}

const STATE: [(&str, DataType); 6] = [
    ("n", DataType::UInt64),
    ("dot", DataType::Float64),
    ("aa", DataType::Float64),
    ("bb", DataType::Float64),
    ("sq_err", DataType::Float64),
    ("max_abs_err", DataType::Float64),
];

impl AggregateUDFImpl for PairAggregate {
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

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(PairAccumulator {
            name: self.0.name,
            metric: self.0.metric,
            sums: PairSums::default(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(STATE
            .iter()
            .map(|(n, t)| Arc::new(Field::new(format_state_name(args.name, n), t.clone(), true)))
            .collect())
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some((self.0.documentation)())
    }
}

#[derive(Debug)]
struct PairAccumulator {
    name: &'static str,
    metric: fn(&PairSums) -> Option<f64>,
    sums: PairSums,
}

impl Accumulator for PairAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let a = FloatRows::new(&values[0], self.name, "a")?;
        let b = FloatRows::new(&values[1], self.name, "b")?;
        for row in 0..a.len() {
            if let (Some(x), Some(y)) = (a.row(row), b.row(row)) {
                let s = PairSums::of(x, y)
                    .map_err(|e| exec_datafusion_err!("{}: row {row}: {e}", self.name))?;
                self.sums.merge(&s);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64((self.metric)(&self.sums)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let s = &self.sums;
        Ok(vec![
            ScalarValue::UInt64(Some(s.n as u64)),
            ScalarValue::Float64(Some(s.dot)),
            ScalarValue::Float64(Some(s.aa)),
            ScalarValue::Float64(Some(s.bb)),
            ScalarValue::Float64(Some(s.sq_err)),
            ScalarValue::Float64(Some(s.max_abs_err)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let n = states[0].as_primitive::<UInt64Type>();
        let f = |i: usize| states[i].as_primitive::<Float64Type>();
        let (dot, aa, bb, se, mx) = (f(1), f(2), f(3), f(4), f(5));
        for row in 0..n.len() {
            if n.is_valid(row) {
                self.sums.merge(&PairSums {
                    n: n.value(row) as usize,
                    dot: dot.value(row),
                    aa: aa.value(row),
                    bb: bb.value(row),
                    sq_err: se.value(row),
                    max_abs_err: mx.value(row),
                });
            }
        }
        Ok(())
    }
}
