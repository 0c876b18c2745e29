//! What the Flight SQL service keeps between a client's calls: prepared statements with their
//! bound parameters, and the results of commands that ran when their FlightInfo was asked for.
//! Both are bounded, so clients that never close or never fetch cannot grow the server.

use std::collections::{HashMap, VecDeque};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{ParamValues, Result, ScalarValue, plan_err};
use datafusion::logical_expr::LogicalPlan;

/// Prepared statements kept at once; past this the oldest is forgotten (its handle then answers
/// "unknown prepared statement"), so clients that never close cannot grow the server.
pub const MAX_PREPARED: usize = 1024;

/// A prepared statement: its SQL and the parameters last bound to it.
#[derive(Clone)]
pub(super) struct Statement {
    pub(super) sql: String,
    pub(super) parameters: Option<RecordBatch>,
}

/// The prepared statements, oldest first.
#[derive(Default)]
pub(super) struct Prepared {
    pub(super) statements: HashMap<Vec<u8>, Statement>,
    order: VecDeque<Vec<u8>>,
}

impl Prepared {
    pub(super) fn insert(&mut self, handle: Vec<u8>, statement: Statement) {
        if self.statements.insert(handle.clone(), statement).is_none() {
            self.order.push_back(handle);
        }
        while self.order.len() > MAX_PREPARED {
            if let Some(oldest) = self.order.pop_front() {
                self.statements.remove(&oldest);
            }
        }
    }

    pub(super) fn remove(&mut self, handle: &[u8]) {
        if self.statements.remove(handle).is_some() {
            self.order.retain(|h| h != handle);
        }
    }
}

/// The results of commands (DDL, DML, COPY) that ran when a client asked for their
/// FlightInfo, oldest first, until the client fetches them (at most [`MAX_PREPARED`]).
#[derive(Default)]
pub(super) struct Results {
    batches: HashMap<Vec<u8>, Vec<RecordBatch>>,
    order: VecDeque<Vec<u8>>,
}

impl Results {
    pub(super) fn insert(&mut self, handle: Vec<u8>, batches: Vec<RecordBatch>) {
        self.batches.insert(handle.clone(), batches);
        self.order.push_back(handle);
        while self.order.len() > MAX_PREPARED {
            if let Some(oldest) = self.order.pop_front() {
                self.batches.remove(&oldest);
            }
        }
    }

    pub(super) fn take(&mut self, handle: &[u8]) -> Option<Vec<RecordBatch>> {
        let batches = self.batches.remove(handle)?;
        self.order.retain(|h| h != handle);
        Some(batches)
    }
}

/// The first byte of a ticket that names a kept result rather than SQL text (no SQL starts
/// with a NUL).
pub(super) const RESULT_TICKET: u8 = 0;

/// The first row of a bound parameter batch as positional values `$1`, `$2`, … (columns in
/// order).
pub(super) fn parameter_values(batch: &RecordBatch) -> Result<ParamValues> {
    if batch.num_rows() != 1 {
        return plan_err!(
            "bind one row of parameters to a prepared statement; got {} rows",
            batch.num_rows()
        );
    }
    let values = batch
        .columns()
        .iter()
        .map(|column| ScalarValue::try_from_array(column, 0))
        .collect::<Result<Vec<_>>>()?;
    Ok(ParamValues::from(values))
}

/// The parameter schema of a plan: `$1`, `$2`, … in order, typed where the plan says.
pub(super) fn parameter_schema(plan: &LogicalPlan) -> Result<Schema> {
    let mut types: Vec<(String, Option<DataType>)> =
        plan.get_parameter_types()?.into_iter().collect();
    // `$10` after `$9`: by number where the names are numbers.
    types.sort_by_key(|(name, _)| {
        (
            name.trim_start_matches('$')
                .parse::<u64>()
                .unwrap_or(u64::MAX),
            name.clone(),
        )
    });
    Ok(Schema::new(
        types
            .into_iter()
            .map(|(name, data_type)| Field::new(name, data_type.unwrap_or(DataType::Null), true))
            .collect::<Vec<_>>(),
    ))
}
