//! Arrow Flight SQL over the server's session: statements, prepared statements with
//! parameters, `GetSqlInfo`, and the catalogue calls (catalogs, schemas, tables, table types)
//! that generic clients and BI tools browse with.
//!
//! Written on arrow-flight's `FlightSqlService` rather than `datafusion-flight-sql-server`:
//! that crate brings `datafusion-substrait`, whose build needs `protoc`, and it gives no place
//! to bound a query's time, count it, or hold it to `--max-concurrent-queries`.
//!
//! A statement's ticket is its SQL text: planning is cheap next to running, so `DoGet` plans
//! again instead of the server keeping state between the two calls. Prepared statements are
//! kept (at most [`MAX_PREPARED`]) with their bound parameters, under a handle the server made.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt,
    SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{LogicalPlan, TableType};
use datafusion::prelude::SQLOptions;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::ServerState;
use super::auth::FlightGate;
use super::compute::AbortOnDrop;
use super::handles::{
    MAX_PREPARED, Prepared, RESULT_TICKET, Results, Statement, parameter_schema, parameter_values,
};
use super::query_stream::{Bounded, QueryGuard, channel_stream, over_time, status_of};

/// Serves Flight SQL on `listener` until `stop` completes.
pub async fn serve(
    state: Arc<ServerState>,
    listener: std::net::TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let gate = FlightGate {
        token: state.token.clone(),
        metrics: state.metrics.clone(),
    };
    let limit = state.max_request_bytes;
    let service = FlightServiceServer::new(FlightSql::new(state))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    tonic::transport::Server::builder()
        .layer(gate)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .map_err(std::io::Error::other)
}

/// The Flight SQL service.
pub struct FlightSql {
    state: Arc<ServerState>,
    prepared: Mutex<Prepared>,
    /// Results of commands run when their FlightInfo was asked for, until fetched.
    results: Mutex<Results>,
    next_handle: AtomicU64,
    sql_info: SqlInfoData,
}

/// Whether `plan` changes something (a table created or dropped, a file written) rather than
/// only answering: such a statement runs once, when its FlightInfo is asked for, so it has
/// taken effect when the client's `execute` returns, whether or not the client fetches.
fn is_command(plan: &LogicalPlan) -> bool {
    matches!(
        plan,
        LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_)
    )
}

/// What a client may run: queries, DDL (its paths confined to the root) and DML, but no
/// `SET` and no transactions, so one client cannot change the shared session's limits.
fn sql_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(true)
        .with_allow_dml(true)
        .with_allow_statements(false)
}

type FlightStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl FlightSql {
    pub fn new(state: Arc<ServerState>) -> FlightSql {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "ArrowQuant");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        info.append(SqlInfo::FlightSqlServerReadOnly, false);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0_i32);
        info.append(SqlInfo::FlightSqlServerCancel, false);
        info.append(SqlInfo::SqlDdlCatalog, false);
        info.append(SqlInfo::SqlDdlSchema, true);
        info.append(SqlInfo::SqlDdlTable, true);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        let sql_info = info.build().expect("static SqlInfo values");
        FlightSql {
            state,
            prepared: Mutex::new(Prepared::default()),
            results: Mutex::new(Results::default()),
            next_handle: AtomicU64::new(1),
            sql_info,
        }
    }

    /// `sql` planned in the shared session and checked against [`sql_options`].
    async fn plan(&self, sql: &str) -> Result<LogicalPlan, Status> {
        let work = async {
            let plan = self.state.ctx.state().create_logical_plan(sql).await?;
            sql_options().verify_plan(&plan)?;
            Ok::<_, DataFusionError>(plan)
        };
        match tokio::time::timeout(self.state.query_timeout, work).await {
            Ok(result) => result.map_err(|e| status_of(&self.state, &e)),
            Err(_) => Err(over_time(&self.state)),
        }
    }

    /// Starts `plan` as one bounded query: it waits for a slot among
    /// `--max-concurrent-queries`, and the whole of it (the wait included) must end within
    /// `--query-timeout`. It runs on the compute runtime ([`super::compute`]); its batches come
    /// back through a channel of two, so a slow client holds the query back, not its memory.
    async fn start(&self, plan: LogicalPlan) -> Result<Bounded, Status> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.state.query_timeout;
        let permit = tokio::time::timeout_at(deadline, self.state.queries.clone().acquire_owned())
            .await
            .map_err(|_| over_time(&self.state))?
            .map_err(|_| Status::unavailable("the server is stopping"))?;
        let guard = QueryGuard::new(self.state.clone(), permit, started);
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let ctx = self.state.ctx.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let task = super::compute::handle().spawn(async move {
            let stream = async { ctx.execute_logical_plan(plan).await?.execute_stream().await };
            match stream.await {
                Ok(mut batches) => {
                    while let Some(batch) = batches.next().await {
                        if sender.send(batch).await.is_err() {
                            break;
                        }
                    }
                }
                Err(e) => {
                    let _ = sender.send(Err(e)).await;
                }
            }
        });
        let batches = channel_stream(receiver);
        Ok(Bounded::new(
            schema,
            batches,
            deadline,
            guard,
            AbortOnDrop(task),
        ))
    }

    /// Runs `plan` for DoGet: its batches as Flight data.
    async fn run(
        &self,
        plan: LogicalPlan,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let bounded = self.start(plan).await?;
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(bounded)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(flight)))
    }

    /// Runs `plan` to its end: every batch (for commands, whose answer is a row or none).
    async fn collect(&self, plan: LogicalPlan) -> Result<Vec<RecordBatch>, Status> {
        self.start(plan)
            .await?
            .try_collect()
            .await
            .map_err(status_of_flight_error)
    }

    fn new_handle(&self) -> Vec<u8> {
        let n = self.next_handle.fetch_add(1, Ordering::Relaxed);
        format!("prepared-{n}").into_bytes()
    }

    fn statement(&self, handle: &[u8]) -> Result<Statement, Status> {
        let prepared = self.prepared.lock().expect("not poisoned");
        prepared.statements.get(handle).cloned().ok_or_else(|| {
            self.state.metrics.error("not_found");
            Status::not_found(format!(
                "unknown prepared statement '{}' (closed, or one of more than {MAX_PREPARED})",
                String::from_utf8_lossy(handle)
            ))
        })
    }

    /// The prepared statement's plan, its parameters bound.
    async fn prepared_plan(&self, handle: &[u8]) -> Result<LogicalPlan, Status> {
        let statement = self.statement(handle)?;
        let plan = self.plan(&statement.sql).await?;
        match statement.parameters {
            Some(batch) => {
                let values = parameter_values(&batch).map_err(|e| status_of(&self.state, &e))?;
                plan.with_param_values(values)
                    .map_err(|e| status_of(&self.state, &e))
            }
            None => Ok(plan),
        }
    }

    /// The FlightInfo of `plan`: a query's ticket is `ticket` (run at DoGet); a command runs
    /// now and its ticket names the kept result.
    async fn plan_info(
        &self,
        plan: LogicalPlan,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = plan.schema().as_arrow().clone();
        if !is_command(&plan) {
            return self.info(&schema, ticket, descriptor);
        }
        let batches = self.collect(plan).await?;
        let n = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let mut handle = vec![RESULT_TICKET];
        handle.extend_from_slice(format!("result-{n}").as_bytes());
        self.results
            .lock()
            .expect("not poisoned")
            .insert(handle.clone(), batches);
        let ticket = TicketStatementQuery {
            statement_handle: handle.into(),
        };
        self.info(&schema, ticket.as_any().encode_to_vec(), descriptor)
    }

    /// A FlightInfo whose one endpoint's ticket is `ticket`, for a result of `schema`.
    fn info(
        &self,
        schema: &Schema,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket {
            ticket: ticket.into(),
        });
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("encoding the result schema: {e}")))?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    /// The FlightInfo of a metadata command (catalogs, schemas, tables, SqlInfo…): its ticket
    /// is the command itself, answered at DoGet.
    fn command_info(
        &self,
        schema: &Schema,
        command: &impl ProstMessageExt,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.info(
            schema,
            command.as_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    /// A metadata command's one batch as a DoGet answer.
    fn one_batch(
        batch: Result<RecordBatch, FlightError>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = batch.map_err(Status::from)?;
        let schema = batch.schema();
        Ok(Response::new(Box::pin(
            FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .build(futures::stream::once(async { Ok(batch) }))
                .map_err(Status::from),
        )))
    }

    /// The (catalog, schema, table, type, arrow schema) of every table, in name order.
    async fn tables(
        &self,
    ) -> Result<Vec<(String, String, String, &'static str, SchemaRef)>, Status> {
        let ctx = &self.state.ctx;
        let mut out = Vec::new();
        let mut catalogs = ctx.catalog_names();
        catalogs.sort();
        for catalog_name in catalogs {
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                continue;
            };
            let mut schemas = catalog.schema_names();
            schemas.sort();
            for schema_name in schemas {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                let mut names = schema.table_names();
                names.sort();
                for name in names {
                    let Ok(Some(table)) = schema.table(&name).await else {
                        continue;
                    };
                    let kind = match table.table_type() {
                        TableType::Base => "TABLE",
                        TableType::View => "VIEW",
                        TableType::Temporary => "LOCAL TEMPORARY",
                    };
                    out.push((
                        catalog_name.clone(),
                        schema_name.clone(),
                        name,
                        kind,
                        table.schema(),
                    ));
                }
            }
        }
        Ok(out)
    }
}

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: datafusion::arrow::error::ArrowError| {
            Status::internal(format!("encoding a schema: {e}"))
        })?;
    Ok(message.0)
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    /// With a token: the client shows it as the handshake's payload, or as the password of
    /// `authorization: Basic …`; the answer carries `authorization: Bearer TOKEN` for the calls
    /// that follow. Without one, every handshake succeeds.
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<FlightStream<HandshakeResponse>>, Status> {
        let basic = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|d| {
                let text = String::from_utf8(d).ok()?;
                text.split_once(':')
                    .map(|(_, password)| password.to_string())
            });
        let mut stream = request.into_inner();
        let payload = match stream.next().await {
            Some(Ok(first)) => first.payload,
            Some(Err(status)) => return Err(status),
            None => bytes::Bytes::new(),
        };
        let answer_payload = match &self.state.token {
            None => bytes::Bytes::new(),
            Some(token) => {
                let shown = basic.as_deref().map(str::as_bytes).unwrap_or(&payload);
                if !token.matches(shown) {
                    self.state.metrics.error("auth");
                    return Err(Status::unauthenticated(if shown.is_empty() {
                        "no token: send it as the handshake's payload or as the password of Basic authorization"
                    } else {
                        "wrong token"
                    }));
                }
                bytes::Bytes::copy_from_slice(token.as_str().as_bytes())
            }
        };
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: answer_payload,
        };
        let mut response: Response<FlightStream<HandshakeResponse>> =
            Response::new(Box::pin(futures::stream::once(async { Ok(answer) })));
        if let Some(token) = &self.state.token {
            let value = format!("Bearer {}", token.as_str())
                .parse()
                .map_err(|_| Status::internal("the token is not a valid header value"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let plan = self.plan(&query.query).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        self.plan_info(plan, ticket.as_any().encode_to_vec(), request.into_inner())
            .await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        if ticket.statement_handle.first() == Some(&RESULT_TICKET) {
            let kept = self
                .results
                .lock()
                .expect("not poisoned")
                .take(&ticket.statement_handle);
            let Some(batches) = kept else {
                self.state.metrics.error("not_found");
                return Err(Status::not_found(
                    "this result was fetched already, or forgotten among more than 1024",
                ));
            };
            let schema = batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(Schema::empty()));
            let stream = FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .build(futures::stream::iter(batches.into_iter().map(Ok)))
                .map_err(Status::from);
            return Ok(Response::new(Box::pin(stream)));
        }
        let sql = std::str::from_utf8(&ticket.statement_handle).map_err(|_| {
            Status::invalid_argument("the ticket is not a statement of this server")
        })?;
        let plan = self.plan(sql).await?;
        self.run(plan).await
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let plan = self.plan(&command.query).await?;
        let batches = self.collect(plan).await?;
        // DML answers with one `count` row; DDL with none.
        let count = batches
            .first()
            .filter(|b| b.num_rows() == 1 && b.num_columns() == 1)
            .and_then(|b| ScalarValue::try_from_array(b.column(0), 0).ok())
            .and_then(|v| match v {
                ScalarValue::UInt64(Some(n)) => i64::try_from(n).ok(),
                ScalarValue::Int64(Some(n)) => Some(n),
                _ => None,
            })
            .unwrap_or(0);
        Ok(count)
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let plan = self.plan(&query.query).await?;
        let dataset_schema = schema_bytes(plan.schema().as_arrow())?;
        let parameters = parameter_schema(&plan).map_err(|e| status_of(&self.state, &e))?;
        let parameter_schema = schema_bytes(&parameters)?;
        let handle = self.new_handle();
        self.prepared.lock().expect("not poisoned").insert(
            handle.clone(),
            Statement {
                sql: query.query,
                parameters: None,
            },
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema,
            parameter_schema,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        self.prepared
            .lock()
            .expect("not poisoned")
            .remove(&query.prepared_statement_handle);
        Ok(())
    }

    /// Binds the one-row batch the client sends to the statement's `$1`, `$2`, ….
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = query.prepared_statement_handle.to_vec();
        let mut statement = self.statement(&handle)?;
        let stream = request.into_inner().map_err(flight_error);
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(stream)
            .try_collect()
            .await
            .map_err(status_of_flight_error)?;
        let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        self.state.metrics.request_bytes_in.inc_by(bytes as u64);
        statement.parameters = match batches.as_slice() {
            [] => None,
            [batch] => Some(batch.clone()),
            _ => {
                self.state.metrics.error("bad_request");
                return Err(Status::invalid_argument(format!(
                    "bind one batch of one row of parameters; got {} batches",
                    batches.len()
                )));
            }
        };
        if let Some(batch) = &statement.parameters
            && let Err(e) = parameter_values(batch)
        {
            return Err(status_of(&self.state, &e));
        }
        self.prepared
            .lock()
            .expect("not poisoned")
            .insert(handle.clone(), statement);
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.into()),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let plan = self.prepared_plan(&query.prepared_statement_handle).await?;
        self.plan_info(plan, query.as_any().encode_to_vec(), request.into_inner())
            .await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let plan = self.prepared_plan(&query.prepared_statement_handle).await?;
        self.run(plan).await
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.command_info(&schema, &query, request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Self::one_batch(query.into_builder(&self.sql_info).build())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.command_info(&schema, &query, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let mut names = self.state.ctx.catalog_names();
        names.sort();
        for name in names {
            builder.append(name);
        }
        Self::one_batch(builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.command_info(&schema, &query, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let ctx = &self.state.ctx;
        let mut catalogs = ctx.catalog_names();
        catalogs.sort();
        for catalog_name in catalogs {
            if let Some(catalog) = ctx.catalog(&catalog_name) {
                let mut schemas = catalog.schema_names();
                schemas.sort();
                for schema in schemas {
                    builder.append(&catalog_name, schema);
                }
            }
        }
        Self::one_batch(builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.command_info(&schema, &query, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let tables = self.tables().await?;
        let mut builder = query.into_builder();
        for (catalog, schema, name, kind, table_schema) in tables {
            builder
                .append(catalog, schema, name, kind, &table_schema)
                .map_err(Status::from)?;
        }
        Self::one_batch(builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.command_info(&schema, &query, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for kind in ["LOCAL TEMPORARY", "TABLE", "VIEW"] {
            builder.append(kind);
        }
        Self::one_batch(builder.build())
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.state.metrics.error("bad_request");
        Err(Status::invalid_argument(format!(
            "not a ticket of this server: {}",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// An error decoding a client's batches as a status.
fn status_of_flight_error(error: FlightError) -> Status {
    match error {
        FlightError::Tonic(status) => *status,
        other => Status::invalid_argument(format!("reading the batches sent: {other}")),
    }
}

/// A client stream's status as the error type arrow-flight's decoder carries.
fn flight_error(status: Status) -> FlightError {
    FlightError::Tonic(Box::new(status))
}
