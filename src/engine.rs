//! The one constructor of a configured sessionql session: the `events` table,
//! the `session_events` and `sessions` views, every sessionql function, the JSON
//! functions, and the `sessionql.*` settings. The CLI and every server build
//! their sessions here and nowhere else.

use std::num::NonZeroUsize;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryLimit, MemoryPool, TrackConsumersPool,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use sessionql_udfs::SessionqlConfig;

use crate::channel_files::ChannelFiles;
use crate::distinct_counts::DistinctCountsByCode;
use crate::distinct_keys::DistinctKeysByCode;
use crate::error::{Result, SessionqlError};
use crate::events_table::{EventFormat, LoadReport, adapt_to_events_schema, events_table};
use crate::one_phase_sessions::OnePhaseSessions;
use crate::repeated_keys::DropRepeatedKeys;
use crate::run_sort::SortRuns;
use crate::scan_filters::UncoalescedScanFilters;
use crate::session_start_in_place::SessionStartInPlace;
use crate::session_time_filter::SessionTimeFilter;
use crate::session_views::register_session_views;
use crate::unshuffled_distinct_counts::UnshuffledDistinctCounts;

/// The sample data shipped in the repository, used when no events path is given.
pub fn sample_events_path() -> PathBuf {
    let relative = Path::new("data/sample");
    if relative.is_dir() {
        relative.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample")
    }
}

/// A configured DataFusion session with sessionql's tables and functions.
/// Derefs to [`SessionContext`], so everything DataFusion offers works on it.
///
/// ```no_run
/// # async fn example() -> Result<(), sessionql::SessionqlError> {
/// let engine = sessionql::Engine::builder()
///     .events("data/sample")
///     .idle_timeout_seconds(600)
///     .build()
///     .await?;
/// let batches = engine
///     .sql("SELECT channel_type, count(*) FROM sessions GROUP BY 1")
///     .await?
///     .collect()
///     .await?;
/// # Ok(()) }
/// ```
pub struct Engine {
    context: SessionContext,
    load_report: LoadReport,
}

/// Options of an [`Engine`]; see [`Engine::builder`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    events: Option<PathBuf>,
    settings: SessionqlConfig,
    target_partitions: Option<usize>,
    cluster: Option<String>,
}

impl Engine {
    /// Starts building an engine over the sample data with default settings.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            events: None,
            settings: SessionqlConfig::default(),
            target_partitions: None,
            cluster: None,
        }
    }

    /// The DataFusion session.
    pub fn context(&self) -> &SessionContext {
        &self.context
    }

    /// What loading the events found (files, skipped lines).
    pub fn load_report(&self) -> &LoadReport {
        &self.load_report
    }

    /// Runs one or more `;`-separated statements in order in this session
    /// (so `SET …; SELECT …` works) and returns the last one's result.
    pub async fn run_statements(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        run_statements(&self.context, sql).await
    }
}

/// Runs `;`-separated statements in order on `context`, returning the schema and
/// rows of the last; an empty text is an error naming the problem.
pub async fn run_statements(
    context: &SessionContext,
    sql: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let statements =
        DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(SessionqlError::Query)?;
    if statements.is_empty() {
        return Err(SessionqlError::Invalid("no SQL statement given".into()));
    }
    let mut last = None;
    for statement in statements {
        let text = statement.to_string();
        let is_set = text
            .trim_start()
            .get(..4)
            .is_some_and(|start| start.eq_ignore_ascii_case("SET "));
        let settings_before =
            (is_set && text.contains("sessionql.channel_")).then(|| current_settings(context));
        let sets_memory_limit = is_set && sets_memory_limit(&text);
        let mut result = run_statement(context, statement).await;
        if sets_memory_limit && result.is_ok() {
            share_memory_limit_fairly(context)?;
        }
        if let Some(before) = settings_before
            && result.is_ok()
            && let Err(error) = check_channel_files(context).await
        {
            // Keep the session usable: a file that cannot be read is not set.
            restore_channel_settings(context, &before)?;
            result = Err(error);
        }
        // DataFusion's message for a bad SET value does not name the setting.
        last = Some(result.map_err(|error| match error {
            SessionqlError::Query(error) if is_set => {
                SessionqlError::Invalid(format!("{text}: {error}"))
            }
            other => other,
        })?);
    }
    last.ok_or_else(|| SessionqlError::Invalid("no SQL statement given".into()))
}

/// DataFusion's setting for a session's memory pool size.
pub const MEMORY_LIMIT_SETTING: &str = "datafusion.runtime.memory_limit";

/// Whether a statement's text names [`MEMORY_LIMIT_SETTING`] (in any case).
pub fn sets_memory_limit(sql: &str) -> bool {
    sql.to_ascii_lowercase().contains(MEMORY_LIMIT_SETTING)
}

/// A memory pool of `limit` bytes that gives each spilling operator a fair
/// share rather than first come, first served (DataFusion's pool for
/// `SET datafusion.runtime.memory_limit`). Under the greedy pool, one
/// partition's aggregation of a sessions query took 3 GB of a 4 GB limit and
/// the other partition's failed with nothing of its own to spill; with fair
/// shares each spills and the query completes (50M events, README).
pub fn fair_memory_pool(limit: usize) -> Arc<dyn MemoryPool> {
    Arc::new(TrackConsumersPool::new(
        FairSpillPool::new(limit),
        NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN),
    ))
}

/// After `SET datafusion.runtime.memory_limit`, replaces the greedy pool
/// DataFusion made with a [`fair_memory_pool`] of the same size (also for
/// servers that run a client's SET themselves).
pub fn share_memory_limit_fairly(context: &SessionContext) -> Result<()> {
    let state = context.state_ref();
    let mut state = state.write();
    let runtime = state.runtime_env();
    let MemoryLimit::Finite(limit) = runtime.memory_pool.memory_limit() else {
        return Ok(());
    };
    let runtime = RuntimeEnvBuilder::from_runtime_env(runtime)
        .with_memory_pool(fair_memory_pool(limit))
        .build_arc()?;
    *state = SessionStateBuilder::new_from_existing(state.clone())
        .with_runtime_env(runtime)
        .build();
    Ok(())
}

fn current_settings(context: &SessionContext) -> SessionqlConfig {
    SessionqlConfig::from_options(context.state_ref().read().config().options())
}

fn restore_channel_settings(context: &SessionContext, before: &SessionqlConfig) -> Result<()> {
    let state = context.state_ref();
    let mut state = state.write();
    let options = state.config_mut().options_mut();
    options.set("sessionql.channel_definitions", &before.channel_definitions)?;
    options.set("sessionql.channel_rules", &before.channel_rules)?;
    Ok(())
}

/// Reads the channel files the session's settings name, so a missing or
/// malformed file is reported when it is set, not at the first query.
async fn check_channel_files(context: &SessionContext) -> Result<()> {
    let settings = current_settings(context);
    if settings.channel_definitions.is_empty() && settings.channel_rules.is_empty() {
        return Ok(());
    }
    context
        .sql("SELECT channel_type(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
        .await?
        .collect()
        .await?;
    Ok(())
}

async fn run_statement(
    context: &SessionContext,
    statement: Statement,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let plan = context.state().statement_to_plan(statement).await?;
    let frame = context.execute_logical_plan(plan).await?;
    let schema = Arc::clone(frame.schema().inner());
    let batches = frame.collect().await?;
    Ok((schema, batches))
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Engine")
            .field("session_id", &self.context.session_id())
            .field("load_report", &self.load_report)
            .finish()
    }
}

impl Deref for Engine {
    type Target = SessionContext;

    fn deref(&self) -> &SessionContext {
        &self.context
    }
}

impl EngineBuilder {
    /// Reads events from this file or directory (Parquet, NDJSON or CSV).
    pub fn events(mut self, path: impl Into<PathBuf>) -> Self {
        self.events = Some(path.into());
        self
    }

    /// Idle gap that ends a derived session (default 1800 s).
    pub fn idle_timeout_seconds(mut self, seconds: u64) -> Self {
        self.settings.session_idle_timeout_seconds = seconds;
        self
    }

    /// Longest span of a derived session (default 86400 s).
    pub fn max_session_duration_seconds(mut self, seconds: u64) -> Self {
        self.settings.session_max_duration_seconds = seconds;
        self
    }

    /// Sessions at least this long are never bounces (default 10 s).
    pub fn bounce_duration_seconds(mut self, seconds: u64) -> Self {
        self.settings.bounce_duration_seconds = seconds;
        self
    }

    /// Reads channel definitions (PostHog's JSON table format) from this file
    /// instead of the built-in source and medium lists.
    pub fn channel_definitions(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.channel_definitions = path.into().to_string_lossy().into_owned();
        self
    }

    /// Tries the custom channel rules in this JSON file before the built-in rules.
    pub fn channel_rules(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.channel_rules = path.into().to_string_lossy().into_owned();
        self
    }

    /// Partitions DataFusion splits work into (default: the number of cores).
    pub fn target_partitions(mut self, partitions: usize) -> Self {
        self.target_partitions = Some(partitions);
        self
    }

    /// Runs queries on the Ballista cluster whose scheduler is at `url`
    /// (`df://HOST:PORT`) instead of in this process. Needs the `distributed`
    /// feature, and events in Parquet at a path (or object store URL) every
    /// executor can read.
    pub fn cluster(mut self, url: impl Into<String>) -> Self {
        self.cluster = Some(url.into());
        self
    }

    /// Builds the session: registers functions, loads or lists the events and
    /// creates the session views.
    pub async fn build(self) -> Result<Engine> {
        let mut context = session_context(&self.settings, self.target_partitions)?;
        if let Some(cluster) = &self.cluster {
            context = on_cluster(&context, cluster)?;
        }
        check_channel_files(&context).await?;
        let events_path = self.events.unwrap_or_else(sample_events_path);
        let partitions = context.state().config().target_partitions();
        let (events, load_report) = match object_store_url(&events_path) {
            Some(url) => (object_store_events(url)?, LoadReport::default()),
            None => events_table(&events_path, partitions)?,
        };
        if self.cluster.is_some()
            && load_report
                .format
                .is_some_and(|format| format != EventFormat::Parquet)
        {
            return Err(SessionqlError::Invalid(format!(
                "{}: a cluster reads events from Parquet files every executor can read; \
                 NDJSON and CSV events are loaded into this process only \
                 (turn them into Parquet with `sessionql ingest`)",
                events_path.display()
            )));
        }
        context.register_table("events", events)?;
        register_session_views(&context).await?;
        Ok(Engine {
            context,
            load_report,
        })
    }
}

/// The events path as an object store URL (`s3://bucket/prefix/`), if it is one.
fn object_store_url(path: &Path) -> Option<&str> {
    path.to_str().filter(|text| text.starts_with("s3://"))
}

#[cfg(feature = "distributed")]
fn on_cluster(context: &SessionContext, url: &str) -> Result<SessionContext> {
    let cluster = crate::distributed::ClusterUrl::parse(url)?;
    crate::distributed::connect(context, &cluster)
}

#[cfg(not(feature = "distributed"))]
fn on_cluster(_context: &SessionContext, url: &str) -> Result<SessionContext> {
    Err(SessionqlError::Invalid(format!(
        "--cluster {url}: this sessionql was built without Ballista; \
         build it with `cargo build --release --features distributed`"
    )))
}

#[cfg(feature = "distributed")]
fn object_store_events(url: &str) -> Result<Arc<dyn TableProvider>> {
    crate::events_table::parquet_table_at_url(url)
}

#[cfg(not(feature = "distributed"))]
fn object_store_events(url: &str) -> Result<Arc<dyn TableProvider>> {
    Err(SessionqlError::Invalid(format!(
        "--events {url}: object stores need the `distributed` feature \
         (`cargo build --release --features distributed`)"
    )))
}

/// Makes `table` the `events` table of `context` (adapted to the events schema:
/// missing optional columns read as NULL) and (re)creates `session_events` and
/// `sessions` over it. For programs that hold events in a table of their own.
pub async fn use_events_table(
    context: &SessionContext,
    table: Arc<dyn TableProvider>,
) -> Result<()> {
    let events = adapt_to_events_schema("events", table)?;
    context.deregister_table("events")?;
    context.register_table("events", events)?;
    register_session_views(context).await
}

/// A session with `base`'s settings, functions and tables whose catalog is its
/// own: tables it creates or replaces (its own `events`, say) are seen by it
/// alone. Servers give one to each connection. Schemas named in `skip` are
/// left out (a server sets up its own `pg_catalog` over the copy).
pub async fn isolated_session(base: &SessionContext, skip: &[&str]) -> Result<SessionContext> {
    let catalogs = Arc::new(MemoryCatalogProviderList::new());
    for catalog_name in base.catalog_names() {
        let Some(catalog) = base.catalog(&catalog_name) else {
            continue;
        };
        let copy = Arc::new(MemoryCatalogProvider::new());
        for schema_name in catalog.schema_names() {
            if skip.contains(&schema_name.as_str()) {
                continue;
            }
            let Some(schema) = catalog.schema(&schema_name) else {
                continue;
            };
            let schema_copy = Arc::new(MemorySchemaProvider::new());
            for table_name in schema.table_names() {
                if let Some(table) = schema.table(&table_name).await? {
                    schema_copy.register_table(table_name, table)?;
                }
            }
            copy.register_schema(&schema_name, schema_copy)?;
        }
        catalogs.register_catalog(catalog_name, copy);
    }
    let state = SessionStateBuilder::new_from_existing(base.state())
        .with_catalog_list(catalogs)
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// DataFusion settings sessionql changes from DataFusion's defaults.
///
/// `datafusion.optimizer.enable_leaf_expression_pushdown` is off: in
/// DataFusion 55.2 the rule behind it, pushing the JSON functions' calls
/// below the `session_events` union, made `SELECT json_get_str(properties,
/// 'plan'), count(*) FROM session_events GROUP BY 1` return the `uuid`
/// column instead (pinned in `tests/sql/analyst_queries.slt`).
pub fn with_sessionql_defaults(config: SessionConfig) -> SessionConfig {
    let mut config = config;
    config
        .options_mut()
        .optimizer
        .enable_leaf_expression_pushdown = false;
    config
}

/// In a local session, a `GROUP BY`'s partial phase is skipped (rows go
/// straight to the final phase) when it keeps more than this share of its
/// input rows; DataFusion's default, 0.8, stays on a cluster, where the
/// partial phase saves network traffic. A partial phase that keeps 30–80% of
/// the rows still builds a hash table of nearly all of them, and the final
/// phase builds it again: unique sessions per event name
/// (`count(DISTINCT session_id) … GROUP BY event`, whose partial phase kept
/// 38% of 10M rows before `repeated_keys` dropped repeats ahead of it) took 8%
/// less time and a tenth less memory with the partial phase skipped (README,
/// speed).
pub const LOCAL_PARTIAL_AGGREGATION_SKIP_RATIO: f64 = 0.3;

/// In a local session, a sort whose buffered input is below this many bytes
/// per partition concatenates it and sorts it in one pass; above it, and on
/// a cluster, DataFusion's way stays (its threshold is 1 MiB): each batch
/// sorted, then all merged. The half of `sessions` that derives sessions
/// sorts its events (every column the view reads) by user and time; at 10M
/// events that sort took 0.20 s of CPU instead of 0.47 s. That sort is now
/// `run_sort`'s where memory is not limited; under a memory limit it is
/// DataFusion's again and spills as before (the same spills at 50M under 4
/// GiB), each spilled run sorted in one pass (README, speed).
pub const LOCAL_SORT_IN_PLACE_THRESHOLD_BYTES: usize = 512 * 1024 * 1024;

/// A session with sessionql's functions and settings but no tables: for
/// embedding the functions over one's own tables.
pub fn session_context(
    settings: &SessionqlConfig,
    target_partitions: Option<usize>,
) -> Result<SessionContext> {
    let mut config = with_sessionql_defaults(
        SessionConfig::new()
            .with_information_schema(true)
            .with_option_extension(settings.clone()),
    );
    config
        .options_mut()
        .execution
        .skip_partial_aggregation_probe_ratio_threshold = LOCAL_PARTIAL_AGGREGATION_SKIP_RATIO;
    config.options_mut().execution.sort_in_place_threshold_bytes =
        LOCAL_SORT_IN_PLACE_THRESHOLD_BYTES;
    if let Some(partitions) = target_partitions {
        config = config.with_target_partitions(partitions);
    }
    let mut state = with_object_stores(
        SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(OnePhaseSessions))
            .with_physical_optimizer_rule(Arc::new(DropRepeatedKeys))
            .with_physical_optimizer_rule(Arc::new(SessionStartInPlace))
            .with_physical_optimizer_rule(Arc::new(SortRuns))
            .with_physical_optimizer_rule(Arc::new(DistinctKeysByCode))
            .with_physical_optimizer_rule(Arc::new(DistinctCountsByCode))
            .with_physical_optimizer_rule(Arc::new(UnshuffledDistinctCounts))
            .with_physical_optimizer_rule(Arc::new(UncoalescedScanFilters)),
    )?
    .build();
    state.add_analyzer_rule(Arc::new(SessionTimeFilter));
    register_sessionql_functions(&mut state)?;
    Ok(SessionContext::new_with_state(state))
}

/// Registers sessionql's functions (channel files read from this machine's
/// file system) and the JSON functions on `state`: for local sessions and for
/// every node of a cluster.
pub fn register_sessionql_functions(
    state: &mut datafusion::execution::SessionState,
) -> datafusion::common::Result<()> {
    sessionql_udfs::register_all_with_channel_source(
        state,
        Some(Arc::new(ChannelFiles::default())),
    )?;
    datafusion_functions_json::register_all(state)?;
    Ok(())
}

/// With the `distributed` feature, `s3://` events are readable in a local
/// session too (the same stores the cluster's nodes use).
#[cfg(feature = "distributed")]
fn with_object_stores(builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(
            crate::distributed::object_stores::SessionqlObjectStores::default(),
        ))
        .build_arc()?;
    Ok(builder.with_runtime_env(runtime))
}

#[cfg(not(feature = "distributed"))]
fn with_object_stores(builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
    Ok(builder)
}
