//! One query's stream of batches while a client reads it: bounded by the server's time limit,
//! holding its slot among `--max-concurrent-queries`, counted in the metrics however it ends,
//! and sent in the schema its FlightInfo advertised.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arrow_flight::error::FlightError;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DataFusionError;
use futures::{Stream, StreamExt};
use tonic::Status;

use super::ServerState;
use super::compute::AbortOnDrop;
use crate::root::OutsideRoot;

/// One query while it runs: holds its slot, and counts it when it ends however it ends.
pub(super) struct QueryGuard {
    state: Arc<ServerState>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    started: Instant,
}

impl QueryGuard {
    pub(super) fn new(
        state: Arc<ServerState>,
        permit: tokio::sync::OwnedSemaphorePermit,
        started: Instant,
    ) -> QueryGuard {
        state.metrics.queries_running.inc();
        QueryGuard {
            state,
            _permit: permit,
            started,
        }
    }
}

impl Drop for QueryGuard {
    fn drop(&mut self) {
        let metrics = &self.state.metrics;
        metrics.queries_running.dec();
        metrics
            .query_seconds
            .with_label_values(&["flight"])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// A query's batches until its deadline; past it, one error and the end (dropping the inner
/// stream cancels the query's work).
pub(super) struct Bounded {
    /// The schema the FlightInfo advertised, which every batch is sent in.
    schema: SchemaRef,
    inner: Batches,
    /// The task producing `inner`, stopped when this stream is dropped.
    _task: AbortOnDrop,
    deadline: Pin<Box<tokio::time::Sleep>>,
    guard: QueryGuard,
    done: bool,
}

impl Bounded {
    /// `inner`'s batches in `schema` until `deadline`.
    pub(super) fn new(
        schema: SchemaRef,
        inner: Batches,
        deadline: tokio::time::Instant,
        guard: QueryGuard,
        task: AbortOnDrop,
    ) -> Bounded {
        Bounded {
            schema,
            inner,
            _task: task,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            guard,
            done: false,
        }
    }
}

impl Stream for Bounded {
    type Item = Result<RecordBatch, FlightError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.done = true;
            let status = over_time(&self.guard.state);
            return Poll::Ready(Some(Err(FlightError::Tonic(Box::new(status)))));
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                let bytes = batch.get_array_memory_size() as u64;
                self.guard.state.metrics.flight_bytes_out.inc_by(bytes);
                let batch = in_schema(batch, &self.schema).map_err(FlightError::Arrow);
                if batch.is_err() {
                    self.done = true;
                }
                Poll::Ready(Some(batch))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                let status = status_of(&self.guard.state, &e);
                Poll::Ready(Some(Err(FlightError::Tonic(Box::new(status)))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `batch` in `schema`: the plan's logical schema, which physical batches may differ from in
/// representation (a string column as `Utf8View`) or nullability. Clients decode the batches by
/// the advertised schema, so a batch is cast to it, never sent as it is.
fn in_schema(
    batch: RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    if batch.schema_ref() == schema {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                datafusion::arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// A query's batches as they arrive from the task that runs it.
pub(super) type Batches =
    Pin<Box<dyn Stream<Item = Result<RecordBatch, DataFusionError>> + Send + 'static>>;

/// The receiving end of a query task's channel as a stream of its batches.
pub(super) fn channel_stream(
    mut receiver: tokio::sync::mpsc::Receiver<Result<RecordBatch, DataFusionError>>,
) -> Batches {
    Box::pin(futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)))
}

/// A DataFusion error as the gRPC status a client can act on, counted by kind: a path outside
/// the root is "permission denied", a memory limit "resource exhausted", a bad statement
/// "invalid argument".
pub(super) fn status_of(state: &ServerState, error: &DataFusionError) -> Status {
    let message = crate::cli::error_line(error);
    let (kind, status) = match error.find_root() {
        DataFusionError::External(e) if e.downcast_ref::<OutsideRoot>().is_some() => {
            ("path", Status::permission_denied(message))
        }
        DataFusionError::ResourcesExhausted(_) => ("limit", Status::resource_exhausted(message)),
        DataFusionError::Plan(_)
        | DataFusionError::SQL(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => ("plan", Status::invalid_argument(message)),
        _ => ("execution", Status::internal(message)),
    };
    state.metrics.error(kind);
    status
}

/// The answer to a query past `--query-timeout`, counted as a limit error.
pub(super) fn over_time(state: &ServerState) -> Status {
    state.metrics.error("limit");
    Status::deadline_exceeded(format!(
        "the query ran past the server's limit of {} s (--query-timeout)",
        state.query_timeout.as_secs_f64()
    ))
}
