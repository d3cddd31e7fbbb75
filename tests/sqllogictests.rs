//! SQL behaviour, pinned by sqllogictest files.
//!
//! 1. `tests/sql/**/*.slt`: sessionql's own files, run against sessionql's
//!    session. A file makes its events with `CREATE TABLE events …` (any subset
//!    of the events columns); the harness then makes that table the `events`
//!    table, as `sessionql::use_events_table` does for programs, so the
//!    `sessions` and `session_events` views read it; `SET sessionql.…` runs
//!    through sessionql, as the CLI and the servers run it.
//! 2. The self-contained `.slt` files shipped with `datafusion-sqllogictest`,
//!    run on a plain DataFusion session and on sessionql's (with the sample
//!    events and every function registered): each file that passes on the
//!    plain session must pass on ours, so sessionql breaks no stock SQL.
//!
//! 3. sessionql's own files again, over the Postgres wire protocol: the real
//!    `sessionql serve --pg-port`, a connection per file, values turned back
//!    into DataFusion's text (`tests/slt/postgres_db.rs`), the same expected
//!    rows.
//!
//! 4. With the `distributed` feature, sessionql's own files once more on a
//!    Ballista cluster (a scheduler and two executors in this process,
//!    `tests/slt/cluster_db.rs`), the same expected rows.
//!
//! `cargo test --test sqllogictests -- FILTER` runs only files whose path
//! contains FILTER; `SESSIONQL_STOCK_SLT=0` skips part 2.

#[cfg(feature = "distributed")]
#[path = "slt/cluster_db.rs"]
mod cluster_db;
#[path = "slt/postgres_db.rs"]
mod postgres_db;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use datafusion_sqllogictest::{
    DFColumnType, DFSqlLogicTestError, DataFusion, TestContext, df_value_validator,
    value_normalizer,
};
use futures::StreamExt;
use indicatif::ProgressBar;
use sessionql::{Engine, SessionqlConfig, run_statements, session_context, use_events_table};
use sqllogictest::{DBOutput, Record, parse_file, strict_column_validator};

/// Stock files that enumerate every table or function of the session: any
/// added table or function changes their expected output by design.
const CATALOG_LISTING_FILES: [&str; 4] = [
    "information_schema.slt",
    "information_schema_columns.slt",
    "information_schema_multiple_catalogs.slt",
    "information_schema_table_types.slt",
];

/// Stock files the stock runner sets up specially (extra tables, providers or
/// planners) that a generic session does not have.
const SPECIALLY_PREPARED_FILES: [&str; 13] = [
    "cte.slt",
    "map.slt",
    "avro.slt",
    "dynamic_file.slt",
    "joins.slt",
    "range_partitioning.slt",
    "metadata.slt",
    "arrow_field.slt",
    "union_function.slt",
    "aggregate.slt",
    "dictionary_struct.slt",
    "async_udf.slt",
    "cast_extension_type_metadata.slt",
];

/// Stock files whose EXPLAIN output shows DataFusion's leaf-expression
/// pushdown, which sessionql turns off (`engine::with_sessionql_defaults`:
/// it gave wrong rows for JSON calls over `session_events`).
const LEAF_PUSHDOWN_PLAN_FILES: [&str; 1] = ["push_down_filter_unnest.slt"];

/// Text that marks a stock file as reading or writing files outside itself.
const EXTERNAL_FILE_MARKERS: [&str; 6] = [
    "../",
    "LOCATION",
    "COPY ",
    "STORED AS",
    "test_files/scratch",
    "/tmp/",
];

/// Files run at once: the machine has two cores.
const CONCURRENT_FILES: usize = 2;

/// sessionql's session in the sqllogictest runner: DataFusion's runner (same
/// value formatting as DataFusion's own tests), plus the events hook.
struct SessionqlDb {
    inner: DataFusion,
    context: SessionContext,
}

#[async_trait]
impl sqllogictest::AsyncDB for SessionqlDb {
    type Error = DFSqlLogicTestError;
    type ColumnType = DFColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DFColumnType>, DFSqlLogicTestError> {
        if let Some(done) = run_if_setting(&self.context, sql).await {
            return done;
        }
        let output = self.inner.run(sql).await?;
        if creates_events_table(sql) {
            let table = self.context.table_provider("events").await?;
            use_events_table(&self.context, table)
                .await
                .map_err(|error| DFSqlLogicTestError::Other(error.to_string()))?;
        }
        Ok(output)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "sessionql"
    }

    async fn sleep(duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// Runs a `SET sessionql.…` statement through sessionql, as every door runs
/// it (a bad value or channel file is refused when set); `None` for any other
/// statement.
async fn run_if_setting(
    context: &SessionContext,
    sql: &str,
) -> Option<Result<DBOutput<DFColumnType>, DFSqlLogicTestError>> {
    let is_setting = sql
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("set sessionql.");
    if !is_setting {
        return None;
    }
    Some(
        run_statements(context, sql)
            .await
            .map(|_| DBOutput::StatementComplete(0))
            .map_err(|error| DFSqlLogicTestError::Other(error.to_string())),
    )
}

fn creates_events_table(sql: &str) -> bool {
    created_table(sql).as_deref() == Some("events")
}

/// The name of the table a `CREATE [OR REPLACE] TABLE` statement makes.
fn created_table(sql: &str) -> Option<String> {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(6)
        .map(|word| word.to_ascii_lowercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["create", "table", name, ..] | ["create", "or", "replace", "table", name, ..] => {
            name.split('(').next().map(str::to_string)
        }
        _ => None,
    }
}

/// Runs every record of a file, collecting all failures rather than stopping
/// at the first.
async fn run_file<D, F, Fut>(path: &Path, make_db: F) -> Result<(), String>
where
    D: sqllogictest::AsyncDB<ColumnType = DFColumnType> + Send,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<D, D::Error>> + Send + 'static,
{
    let records = parse_file::<DFColumnType>(path).map_err(|error| error.to_string())?;
    let mut runner = sqllogictest::Runner::new(make_db);
    runner.add_label("Datafusion");
    runner.with_column_validator(strict_column_validator);
    runner.with_normalizer(value_normalizer);
    runner.with_validator(df_value_validator);
    let mut errors = Vec::new();
    for record in records {
        if let Record::Halt { .. } = record {
            break;
        }
        if let Err(error) = runner.run_async(record).await {
            errors.push(error.to_string());
        }
    }
    runner.shutdown_async().await;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n\n"))
    }
}

fn slt_files(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "slt") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

async fn sessionql_session_for_own_files() -> Result<SessionqlDb, DFSqlLogicTestError> {
    let context = session_context(&SessionqlConfig::default(), Some(4))
        .map_err(|error| DFSqlLogicTestError::Other(error.to_string()))?;
    Ok(SessionqlDb {
        inner: DataFusion::new(context.clone(), PathBuf::new(), ProgressBar::hidden()),
        context,
    })
}

async fn sessionql_session_with_sample() -> Result<DataFusion, DFSqlLogicTestError> {
    let engine = Engine::builder()
        .target_partitions(4)
        .build()
        .await
        .map_err(|error| DFSqlLogicTestError::Other(error.to_string()))?;
    Ok(DataFusion::new(
        engine.context().clone(),
        PathBuf::new(),
        ProgressBar::hidden(),
    ))
}

/// Where cargo unpacked `datafusion-sqllogictest`, from `cargo metadata`.
fn stock_test_files() -> Option<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let manifest = metadata["packages"]
        .as_array()?
        .iter()
        .find(|package| package["name"] == "datafusion-sqllogictest")?["manifest_path"]
        .as_str()?
        .to_string();
    Some(Path::new(&manifest).parent()?.join("test_files"))
}

/// Why a stock file is not run, or `None` when it is self-contained.
fn stock_exclusion(root: &Path, path: &Path) -> Option<&'static str> {
    let relative = path.strip_prefix(root).ok()?;
    let name = relative.file_name()?.to_str()?;
    let top = relative.components().next()?.as_os_str().to_str()?;
    if matches!(top, "spark" | "tpch" | "pg_compat") {
        return Some("need Spark functions, TPC-H data or PostgreSQL");
    }
    if CATALOG_LISTING_FILES.contains(&name) {
        return Some("list every table and function of the session");
    }
    if SPECIALLY_PREPARED_FILES.contains(&name) {
        return Some("DataFusion's own runner prepares specially");
    }
    if LEAF_PUSHDOWN_PLAN_FILES.contains(&name) {
        return Some("show plans of leaf-expression pushdown, off in sessionql");
    }
    let text = std::fs::read_to_string(path).ok()?;
    if EXTERNAL_FILE_MARKERS
        .iter()
        .any(|marker| text.contains(marker))
    {
        return Some("read or write files outside themselves");
    }
    None
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
    failures: Vec<String>,
}

/// Part 1: the own files in process.
async fn run_own_files(filter: Option<&str>, tally: &mut Tally) {
    run_own_files_on(filter, tally, "", sessionql_session_for_own_files).await;
}

/// Part 4: the own files on an in-process Ballista cluster.
#[cfg(feature = "distributed")]
async fn run_own_files_on_cluster(filter: Option<&str>, tally: &mut Tally) {
    let url = match cluster_db::start_in_process_cluster().await {
        Ok(url) => url,
        Err(error) => {
            tally.failed += 1;
            tally.failures.push(format!("in-process cluster: {error}"));
            return;
        }
    };
    // The cluster lives as long as the process; so may its address.
    let url: &'static str = Box::leak(url.into_boxed_str());
    run_own_files_on(filter, tally, " on a Ballista cluster", move || {
        cluster_db::ClusterDb::connect(url.to_string())
    })
    .await;
}

/// Part 3: the own files over the Postgres protocol.
async fn run_own_files_over_postgres(filter: Option<&str>, tally: &mut Tally) {
    let server = match postgres_db::PgServer::start() {
        Ok(server) => server,
        Err(error) => {
            tally.failed += 1;
            tally.failures.push(format!("Postgres server: {error}"));
            return;
        }
    };
    let port = server.port;
    run_own_files_on(filter, tally, " over Postgres", move || {
        postgres_db::PgDb::connect(port)
    })
    .await;
}

/// Runs each own `.slt` file (matching `filter`) on a database from `make_db`;
/// `label` tells the runs apart in the output.
async fn run_own_files_on<D, F, Fut>(
    filter: Option<&str>,
    tally: &mut Tally,
    label: &str,
    make_db: F,
) where
    D: sqllogictest::AsyncDB<ColumnType = DFColumnType> + Send,
    F: Fn() -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<D, D::Error>> + Send + 'static,
{
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
    for path in slt_files(&root) {
        let shown = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if filter.is_some_and(|filter| !shown.contains(filter)) {
            continue;
        }
        let started = Instant::now();
        match run_file(&path, make_db).await {
            Ok(()) => {
                tally.passed += 1;
                println!(
                    "ok      tests/sql/{shown}{label} ({:.1?})",
                    started.elapsed()
                );
            }
            Err(error) => {
                tally.failed += 1;
                println!("FAILED  tests/sql/{shown}{label}");
                tally
                    .failures
                    .push(format!("tests/sql/{shown}{label}:\n{error}"));
            }
        }
    }
}

async fn run_stock_files(filter: Option<&str>, tally: &mut Tally) {
    let Some(root) = stock_test_files().filter(|root| root.is_dir()) else {
        println!(
            "skipped stock DataFusion .slt files: datafusion-sqllogictest's test_files not found"
        );
        tally.skipped += 1;
        return;
    };
    let files: Vec<PathBuf> = slt_files(&root)
        .into_iter()
        .filter(|path| filter.is_none_or(|filter| path.to_string_lossy().contains(filter)))
        .collect();
    let root = Arc::new(root);
    let results = futures::stream::iter(files)
        .map(|path| {
            let root = Arc::clone(&root);
            tokio::spawn(async move {
                let shown = path
                    .strip_prefix(root.as_path())
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                if let Some(reason) = stock_exclusion(&root, &path) {
                    return (shown, StockOutcome::Excluded(reason));
                }
                let Some(relative) = path
                    .strip_prefix(root.as_path())
                    .ok()
                    .map(Path::to_path_buf)
                else {
                    return (shown, StockOutcome::Excluded("lie outside test_files"));
                };
                let plain = run_file(&path, move || {
                    let relative = relative.clone();
                    async move {
                        match TestContext::try_new_for_test_file(&relative).await {
                            Some(test_context) => Ok(DataFusion::new(
                                test_context.session_ctx().clone(),
                                relative,
                                ProgressBar::hidden(),
                            )),
                            None => Err(DFSqlLogicTestError::Other("no plain context".into())),
                        }
                    }
                })
                .await;
                if plain.is_err() {
                    return (shown, StockOutcome::FailsOnPlain);
                }
                match run_file(&path, sessionql_session_with_sample).await {
                    Ok(()) => (shown, StockOutcome::Passed),
                    Err(error) => (shown, StockOutcome::Failed(error)),
                }
            })
        })
        .buffer_unordered(CONCURRENT_FILES)
        .collect::<Vec<_>>()
        .await;
    let (mut passed, mut excluded, mut plain_failures) = (0, 0, 0);
    let mut exclusion_reasons: std::collections::BTreeMap<&str, usize> = Default::default();
    for result in results {
        match result {
            Ok((_, StockOutcome::Passed)) => passed += 1,
            Ok((_, StockOutcome::Excluded(reason))) => {
                excluded += 1;
                *exclusion_reasons.entry(reason).or_default() += 1;
            }
            Ok((_, StockOutcome::FailsOnPlain)) => plain_failures += 1,
            Ok((shown, StockOutcome::Failed(error))) => {
                tally.failed += 1;
                println!("FAILED  stock {shown}");
                tally.failures.push(format!(
                    "stock {shown} (passes on plain DataFusion):\n{error}"
                ));
            }
            Err(error) => {
                tally.failed += 1;
                tally
                    .failures
                    .push(format!("stock file task failed: {error}"));
            }
        }
    }
    tally.passed += passed;
    tally.skipped += excluded + plain_failures;
    for (reason, count) in exclusion_reasons {
        println!("not run: {count} stock files that {reason}");
    }
    println!(
        "stock DataFusion .slt files: {passed} pass on sessionql's session, {excluded} not self-contained, {plain_failures} fail on plain DataFusion too"
    );
}

enum StockOutcome {
    Passed,
    Excluded(&'static str),
    FailsOnPlain,
    Failed(String),
}

fn main() -> ExitCode {
    let filter = std::env::args()
        .skip(1)
        .find(|argument| !argument.starts_with('-'));
    let run_stock = std::env::var("SESSIONQL_STOCK_SLT").map_or(true, |value| value != "0");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    let tally = runtime.block_on(async {
        let mut tally = Tally::default();
        run_own_files(filter.as_deref(), &mut tally).await;
        run_own_files_over_postgres(filter.as_deref(), &mut tally).await;
        #[cfg(feature = "distributed")]
        run_own_files_on_cluster(filter.as_deref(), &mut tally).await;
        if run_stock {
            let started = Instant::now();
            run_stock_files(filter.as_deref(), &mut tally).await;
            println!("stock files took {:.0?}", started.elapsed());
        }
        tally
    });
    for failure in &tally.failures {
        println!("\n{failure}");
    }
    println!(
        "\nsqllogictests: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.skipped
    );
    if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
