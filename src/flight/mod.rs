//! `sessionql serve`: the engine over Arrow Flight SQL, for notebooks and BI
//! tools. A thin door: every session comes from [`crate::Engine`].
//!
//! - Each client connection (remote address) gets its own DataFusion session,
//!   cloned from the engine's, so `SET sessionql.…` by one client never
//!   changes another's results.
//! - `GetFlightInfo` only plans; `DoGet` executes and streams record batches
//!   as DataFusion produces them.
//! - Tickets and prepared-statement handles carry their SQL (and bound
//!   parameters) signed by the server ([`handles`]): the server holds no state
//!   per statement, and a forged handle is refused.

pub mod auth;
pub mod catalog_info;
pub mod handles;
pub mod placeholders;
pub mod sql_info;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetCrossReference,
    CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use arrow_flight::{HandshakeRequest, HandshakeResponse};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::engine::{Engine, isolated_session};
use crate::error::{Result, SessionqlError};
use auth::Credentials;
use handles::{HandleSigner, StatementHandle};

/// Client sessions unused for this long are dropped.
const SESSION_IDLE_LIMIT: Duration = Duration::from_secs(3600);

type HandshakeStream =
    Pin<Box<dyn Stream<Item = std::result::Result<HandshakeResponse, Status>> + Send>>;

type DoGetStream =
    Pin<Box<dyn Stream<Item = std::result::Result<arrow_flight::FlightData, Status>> + Send>>;

/// The Flight SQL service over one engine.
pub struct SessionqlFlightService {
    engine: Engine,
    /// Most memory one query may hold (DataFusion's memory pool); `None` for no limit.
    query_memory_limit: Option<usize>,
    credentials: Credentials,
    sessions: Mutex<HashMap<String, (SessionContext, Instant)>>,
    signer: HandleSigner,
    sql_info: SqlInfoData,
    xdbc_types: XdbcTypeInfoData,
}

impl std::fmt::Debug for SessionqlFlightService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SessionqlFlightService")
            .field("engine", &self.engine)
            .finish()
    }
}

/// A DataFusion error as a gRPC status carrying DataFusion's message.
fn status(error: DataFusionError) -> Status {
    match error {
        DataFusionError::Execution(_)
        | DataFusionError::ResourcesExhausted(_)
        | DataFusionError::External(_) => Status::internal(error.to_string()),
        other => Status::invalid_argument(other.to_string()),
    }
}

fn encode_schema(schema: &Schema) -> std::result::Result<Vec<u8>, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|error: datafusion::arrow::error::ArrowError| {
            Status::internal(error.to_string())
        })?;
    Ok(message.0.to_vec())
}

fn flight_info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> std::result::Result<FlightInfo, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket {
        ticket: ticket.into(),
    });
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|error| Status::internal(error.to_string()))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor))
}

fn one_batch_stream(
    schema: SchemaRef,
    batch: std::result::Result<RecordBatch, arrow_flight::error::FlightError>,
) -> DoGetStream {
    let batches = futures::stream::once(async move { batch });
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from),
    )
}

fn empty_stream(schema: SchemaRef) -> DoGetStream {
    let empty = RecordBatch::new_empty(Arc::clone(&schema));
    one_batch_stream(schema, Ok(empty))
}

impl SessionqlFlightService {
    /// A service whose client sessions start as copies of `engine`'s session.
    pub fn new(engine: Engine, options: ServeOptions) -> Result<Self> {
        let ServeOptions {
            credentials,
            query_memory_limit,
            ..
        } = options;
        let sql_info = sql_info::sql_info_data()
            .map_err(|error| SessionqlError::Invalid(error.to_string()))?;
        let xdbc_types = catalog_info::xdbc_type_info()
            .map_err(|error| SessionqlError::Invalid(error.to_string()))?;
        Ok(Self {
            xdbc_types,
            query_memory_limit,
            engine,
            credentials,
            sessions: Mutex::new(HashMap::new()),
            signer: HandleSigner::default(),
            sql_info,
        })
    }

    /// The session of the client that sent `request` (one per connection),
    /// made on first use over its own copy of the catalog, so the tables a
    /// client creates are its own.
    async fn session<T>(&self, request: &Request<T>) -> (String, SessionContext) {
        let client = request
            .remote_addr()
            .map_or_else(|| "local".to_string(), |address| address.to_string());
        let now = Instant::now();
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions
                .retain(|_, (_, last_used)| now.duration_since(*last_used) < SESSION_IDLE_LIMIT);
            if let Some(entry) = sessions.get_mut(&client) {
                entry.1 = now;
                return (client, entry.0.clone());
            }
        }
        let context = match isolated_session(self.engine.context(), &[]).await {
            Ok(context) => context,
            Err(error) => {
                tracing::warn!(%error, "sharing the server's catalog with a client");
                SessionContext::new_with_state(self.engine.context().state())
            }
        };
        let Ok(mut sessions) = self.sessions.lock() else {
            return (client, context);
        };
        let entry = sessions.entry(client.clone()).or_insert((context, now));
        entry.1 = now;
        (client, entry.0.clone())
    }

    /// A copy of the client's session whose runtime has its own memory pool
    /// of the configured size, so one huge query fails cleanly with
    /// "Resources exhausted" instead of taking the server's memory.
    fn with_query_memory_limit(
        &self,
        context: SessionContext,
    ) -> std::result::Result<SessionContext, Status> {
        let Some(limit) = self.query_memory_limit else {
            return Ok(context);
        };
        let state = context.state();
        let runtime = RuntimeEnvBuilder::from_runtime_env(state.runtime_env())
            .with_memory_pool(crate::engine::fair_memory_pool(limit))
            .build_arc()
            .map_err(status)?;
        let state = SessionStateBuilder::new_from_existing(state)
            .with_runtime_env(runtime)
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    /// The FlightInfo of a metadata command: its result schema and a ticket
    /// that is the command itself (DoGet answers it from the catalog).
    fn command_info(
        &self,
        request: Request<FlightDescriptor>,
        command: &impl ProstMessageExt,
        schema: &Schema,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        self.authenticate(&request)?;
        let ticket = command.as_any().encode_to_vec();
        Ok(Response::new(flight_info(
            schema,
            ticket,
            request.into_inner(),
        )?))
    }

    fn authenticate<T>(&self, request: &Request<T>) -> std::result::Result<(), Status> {
        self.credentials.check(request.metadata(), &self.signer)
    }

    fn decode_handle(&self, bytes: &[u8]) -> std::result::Result<StatementHandle, Status> {
        self.signer
            .decode(bytes)
            .ok_or_else(|| Status::invalid_argument("unknown or forged statement handle"))
    }

    /// Plans a statement without running it (SET and DDL run at DoGet).
    async fn plan(
        &self,
        context: &SessionContext,
        handle: &StatementHandle,
    ) -> std::result::Result<LogicalPlan, Status> {
        let plan = context
            .state()
            .create_logical_plan(&handle.sql)
            .await
            .map_err(status)?;
        match parameter_values(&handle.parameters)? {
            Some(values) => plan.with_param_values(values).map_err(status),
            None => Ok(plan),
        }
    }

    /// Runs a statement and streams its batches, logging one line at the end.
    async fn execute(
        &self,
        client: String,
        context: SessionContext,
        handle: StatementHandle,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let started = Instant::now();
        let plan = self.plan(&context, &handle).await?;
        // Settings and DDL change the client's own session; queries run in a
        // copy with their own memory pool when a limit is set.
        let changes_session = matches!(plan, LogicalPlan::Statement(_) | LogicalPlan::Ddl(_));
        let context = if changes_session {
            context
        } else {
            self.with_query_memory_limit(context)?
        };
        let frame: DataFrame = context.execute_logical_plan(plan).await.map_err(status)?;
        if changes_session && crate::engine::sets_memory_limit(&handle.sql) {
            crate::engine::share_memory_limit_fairly(&context)
                .map_err(|error| Status::internal(error.to_string()))?;
        }
        let schema: SchemaRef = Arc::clone(frame.schema().inner());
        let batches = frame.execute_stream().await.map_err(status)?;
        let log = Arc::new(QueryLog {
            client,
            sql: handle.sql,
            started,
            rows: Default::default(),
        });
        let counted = batches.map(move |batch| {
            if let Ok(batch) = &batch {
                log.rows
                    .fetch_add(batch.num_rows(), std::sync::atomic::Ordering::Relaxed);
            }
            batch.map_err(|error| {
                arrow_flight::error::FlightError::from(datafusion::arrow::error::ArrowError::from(
                    error,
                ))
            })
        });
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(counted)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Logs one line per query when its result stream ends or is dropped.
struct QueryLog {
    client: String,
    sql: String,
    started: Instant,
    rows: std::sync::atomic::AtomicUsize,
}

impl Drop for QueryLog {
    fn drop(&mut self) {
        tracing::info!(
            client = %self.client,
            duration_ms = self.started.elapsed().as_millis() as u64,
            rows = self.rows.load(std::sync::atomic::Ordering::Relaxed),
            sql = %self.sql.chars().take(200).collect::<String>(),
            "query"
        );
    }
}

/// Bound parameters: one row of values, in `$1, $2, …` order.
fn parameter_values(ipc: &[u8]) -> std::result::Result<Option<ParamValues>, Status> {
    if ipc.is_empty() {
        return Ok(None);
    }
    let reader = StreamReader::try_new(ipc, None)
        .map_err(|error| Status::invalid_argument(error.to_string()))?;
    let mut values = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|error| Status::invalid_argument(error.to_string()))?;
        if batch.num_rows() == 0 {
            continue;
        }
        for column in batch.columns() {
            values.push(ScalarValue::try_from_array(column, 0).map_err(status)?);
        }
        break;
    }
    Ok(Some(ParamValues::from(values)))
}

fn parameters_to_ipc(batch: &RecordBatch) -> std::result::Result<Vec<u8>, Status> {
    let mut bytes = Vec::new();
    let mut writer = StreamWriter::try_new(&mut bytes, &batch.schema())
        .map_err(|error| Status::internal(error.to_string()))?;
    writer
        .write(&batch.slice(0, batch.num_rows().min(1)))
        .map_err(|error| Status::internal(error.to_string()))?;
    writer
        .finish()
        .map_err(|error| Status::internal(error.to_string()))?;
    drop(writer);
    Ok(bytes)
}

fn parameter_schema(plan: &LogicalPlan) -> std::result::Result<Schema, Status> {
    let types = plan.get_parameter_types().map_err(status)?;
    let mut names: Vec<&String> = types.keys().collect();
    names.sort_by_key(|name| {
        name.trim_start_matches('$')
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    let fields = names.into_iter().map(|name| {
        let data_type = types
            .get(name)
            .cloned()
            .flatten()
            .unwrap_or(datafusion::arrow::datatypes::DataType::Null);
        Field::new(name.clone(), data_type, true)
    });
    Ok(Schema::new(fields.collect::<Vec<_>>()))
}

#[tonic::async_trait]
impl FlightSqlService for SessionqlFlightService {
    type FlightService = SessionqlFlightService;

    async fn do_handshake(
        &self,
        request: Request<tonic::Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<HandshakeStream>, Status> {
        let token = self
            .credentials
            .issue_token(request.metadata(), &self.signer)?;
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into_bytes().into(),
        };
        let mut response: Response<HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("token is not a valid header"))?;
        response.metadata_mut().insert("authorization", header);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        self.authenticate(&request)?;
        let (_, context) = self.session(&request).await;
        let handle = StatementHandle {
            sql: placeholders::number_question_marks(&query.query),
            parameters: Vec::new(),
        };
        let plan = self.plan(&context, &handle).await?;
        let ticket = TicketStatementQuery {
            statement_handle: self.signer.encode(&handle).into(),
        };
        let info = flight_info(
            plan.schema().as_arrow(),
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.authenticate(&request)?;
        let handle = self.decode_handle(&ticket.statement_handle)?;
        let (client, context) = self.session(&request).await;
        self.execute(client, context, handle).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        self.authenticate(&request)?;
        let handle = self.decode_handle(&query.prepared_statement_handle)?;
        let (_, context) = self.session(&request).await;
        let plan = self.plan(&context, &handle).await?;
        let info = flight_info(
            plan.schema().as_arrow(),
            query.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.authenticate(&request)?;
        let handle = self.decode_handle(&query.prepared_statement_handle)?;
        let (client, context) = self.session(&request).await;
        self.execute(client, context, handle).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> std::result::Result<ActionCreatePreparedStatementResult, Status> {
        self.authenticate(&request)?;
        let (_, context) = self.session(&request).await;
        let handle = StatementHandle {
            sql: placeholders::number_question_marks(&query.query),
            parameters: Vec::new(),
        };
        let plan = self.plan(&context, &handle).await?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: self.signer.encode(&handle).into(),
            dataset_schema: encode_schema(plan.schema().as_arrow())?.into(),
            parameter_schema: encode_schema(&parameter_schema(&plan)?)?.into(),
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<DoPutPreparedStatementResult, Status> {
        self.authenticate(&request)?;
        let handle = self.decode_handle(&query.prepared_statement_handle)?;
        let data = request
            .into_inner()
            .map_err(arrow_flight::error::FlightError::from);
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(|error| {
                Status::invalid_argument(format!("cannot read parameters: {error}"))
            })?;
        let Some(batch) = batches.into_iter().find(|batch| batch.num_rows() > 0) else {
            return Err(Status::invalid_argument("no parameter values were sent"));
        };
        let bound = StatementHandle {
            sql: handle.sql,
            parameters: parameters_to_ipc(&batch)?,
        };
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(self.signer.encode(&bound).into()),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> std::result::Result<(), Status> {
        self.authenticate(&request)?;
        // Handles carry their statement: nothing is held, so nothing to free.
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.command_info(request, &query, &schema)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.authenticate(&request)?;
        let (_, context) = self.session(&request).await;
        let mut builder = query.into_builder();
        for catalog in context.catalog_names() {
            builder.append(catalog);
        }
        let schema = builder.schema();
        Ok(Response::new(one_batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.command_info(request, &query, &schema)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.authenticate(&request)?;
        let (_, context) = self.session(&request).await;
        let mut builder = query.into_builder();
        for catalog_name in context.catalog_names() {
            if let Some(catalog) = context.catalog(&catalog_name) {
                for schema_name in catalog.schema_names() {
                    builder.append(&catalog_name, schema_name);
                }
            }
        }
        let schema = builder.schema();
        Ok(Response::new(one_batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.command_info(request, &query, &schema)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.authenticate(&request)?;
        let (_, context) = self.session(&request).await;
        let mut builder = query.into_builder();
        for catalog_name in context.catalog_names() {
            let Some(catalog) = context.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in schema.table_names() {
                    let Ok(Some(table)) = schema.table(&table_name).await else {
                        continue;
                    };
                    let table_type = match table.table_type() {
                        datafusion::datasource::TableType::View => "VIEW",
                        _ => "TABLE",
                    };
                    builder
                        .append(
                            &catalog_name,
                            &schema_name,
                            &table_name,
                            table_type,
                            table.schema().as_ref(),
                        )
                        .map_err(|error| Status::internal(error.to_string()))?;
                }
            }
        }
        let schema = builder.schema();
        Ok(Response::new(one_batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.command_info(request, &query, &schema)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.authenticate(&request)?;
        let mut builder = query.into_builder();
        for table_type in ["TABLE", "VIEW"] {
            builder.append(table_type);
        }
        let schema = builder.schema();
        Ok(Response::new(one_batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.command_info(request, &query, &schema)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.authenticate(&request)?;
        let builder = query.into_builder(&self.sql_info);
        let schema = builder.schema();
        Ok(Response::new(one_batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.xdbc_types).schema();
        self.command_info(request, &query, &schema)
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.authenticate(&request)?;
        let builder = query.into_builder(&self.xdbc_types);
        let schema = builder.schema();
        Ok(Response::new(one_batch_stream(schema, builder.build())))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = catalog_info::primary_keys_schema();
        self.command_info(request, &query, &schema)
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.authenticate(&request)?;
        Ok(Response::new(empty_stream(
            catalog_info::primary_keys_schema(),
        )))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = catalog_info::foreign_keys_schema();
        self.command_info(request, &query, &schema)
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.authenticate(&request)?;
        Ok(Response::new(empty_stream(
            catalog_info::foreign_keys_schema(),
        )))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = catalog_info::foreign_keys_schema();
        self.command_info(request, &query, &schema)
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.authenticate(&request)?;
        Ok(Response::new(empty_stream(
            catalog_info::foreign_keys_schema(),
        )))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = catalog_info::foreign_keys_schema();
        self.command_info(request, &query, &schema)
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.authenticate(&request)?;
        Ok(Response::new(empty_stream(
            catalog_info::foreign_keys_schema(),
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// How the server runs, beyond the engine.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Who may call (nobody is asked when empty).
    pub credentials: Credentials,
    /// Most memory one query may hold, in bytes.
    pub query_memory_limit: Option<usize>,
    /// PEM certificate chain and private key: serve over TLS.
    pub tls: Option<TlsFiles>,
}

/// The PEM files that turn on TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub certificate: std::path::PathBuf,
    /// Private key (PEM).
    pub key: std::path::PathBuf,
}

fn tls_config(files: &TlsFiles) -> Result<tonic::transport::ServerTlsConfig> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| SessionqlError::EventsPath {
            path: path.to_path_buf(),
            source,
        })
    };
    let identity =
        tonic::transport::Identity::from_pem(read(&files.certificate)?, read(&files.key)?);
    Ok(tonic::transport::ServerTlsConfig::new().identity(identity))
}

/// Serves Flight SQL on `address` until Ctrl-C; prints the bound address on
/// stdout first (so a caller that asked for port 0 learns the port).
pub async fn serve(engine: Engine, address: SocketAddr, options: ServeOptions) -> Result<()> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(files) = &options.tls {
        builder = builder
            .tls_config(tls_config(files)?)
            .map_err(|error| SessionqlError::Invalid(format!("TLS: {error}")))?;
    }
    let (listener, bound) = crate::listen::bind(address).await?;
    crate::listen::announce("Flight SQL", bound);
    tracing::info!(%bound, "Flight SQL server started");
    let service = FlightServiceServer::new(SessionqlFlightService::new(engine, options)?);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    builder
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|error| SessionqlError::Invalid(format!("Flight SQL server stopped: {error}")))
}
