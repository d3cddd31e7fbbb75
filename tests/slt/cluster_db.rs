//! Part 4 of the sqllogictests (feature `distributed`): sessionql's own `.slt`
//! files on a Ballista cluster started in this process (a scheduler and two
//! executors from `sessionql::distributed`, on loopback ports), with the same
//! expected rows as the local engine.
//!
//! A cluster cannot read tables held in the client's memory, so a file's
//! `CREATE TABLE` runs on a local sessionql session, the table is written to
//! Parquet in a temporary directory, and the cluster session reads it from
//! there, as executors read shared files. Everything else runs on the cluster.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use datafusion_sqllogictest::{DFColumnType, DFSqlLogicTestError, DataFusion};
use indicatif::ProgressBar;
use sessionql::distributed::executor::{ExecutorOptions, choose_ports, run_executor};
use sessionql::distributed::scheduler::{SchedulerOptions, run_scheduler};
use sessionql::{Engine, SessionqlConfig, session_context, use_events_table};
use sqllogictest::DBOutput;

/// Executors of the in-process cluster.
const EXECUTORS: usize = 2;

/// Starts a scheduler and [`EXECUTORS`] executors on this process's tokio
/// runtime; they run until the process ends. Returns `df://127.0.0.1:PORT`.
pub async fn start_in_process_cluster() -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| error.to_string())?;
    let port = listener
        .local_addr()
        .map_err(|error| error.to_string())?
        .port();
    tokio::spawn(async move {
        if let Err(error) = run_scheduler(listener, &SchedulerOptions::default()).await {
            eprintln!("in-process scheduler stopped: {error}");
        }
    });
    for _ in 0..EXECUTORS {
        let options = ExecutorOptions {
            scheduler_host: "127.0.0.1".into(),
            scheduler_port: port,
            bind_host: [127, 0, 0, 1].into(),
            flight_port: 0,
            grpc_port: 0,
            concurrency: 2,
            work_dir: None,
            heartbeat_seconds: 5,
        };
        let ports = choose_ports(&options).map_err(|error| error.to_string())?;
        tokio::spawn(async move {
            if let Err(error) = run_executor(&options, ports).await {
                eprintln!("in-process executor stopped: {error}");
            }
        });
    }
    Ok(format!("df://127.0.0.1:{port}"))
}

/// A file's session on the cluster, with a local session that makes its tables.
pub struct ClusterDb {
    cluster: DataFusion,
    cluster_context: SessionContext,
    local: DataFusion,
    local_context: SessionContext,
    tables: tempfile::TempDir,
    tables_made: usize,
}

impl ClusterDb {
    /// A fresh session on the cluster at `url` (no events until a file makes them).
    pub async fn connect(url: String) -> Result<ClusterDb, DFSqlLogicTestError> {
        let other =
            |error: sessionql::SessionqlError| DFSqlLogicTestError::Other(error.to_string());
        let cluster_context = Engine::builder()
            .cluster(url)
            .target_partitions(4)
            .build()
            .await
            .map_err(other)?
            .context()
            .clone();
        let local_context = session_context(&SessionqlConfig::default(), Some(4)).map_err(other)?;
        Ok(ClusterDb {
            cluster: DataFusion::new(
                cluster_context.clone(),
                PathBuf::new(),
                ProgressBar::hidden(),
            ),
            cluster_context,
            local: DataFusion::new(local_context.clone(), PathBuf::new(), ProgressBar::hidden()),
            local_context,
            tables: tempfile::tempdir()
                .map_err(|error| DFSqlLogicTestError::Other(error.to_string()))?,
            tables_made: 0,
        })
    }

    /// Makes the table `name` (just created locally) readable by the cluster.
    async fn share_table(&mut self, name: &str) -> Result<(), DFSqlLogicTestError> {
        let other =
            |error: sessionql::SessionqlError| DFSqlLogicTestError::Other(error.to_string());
        if name == "events" {
            let table = self.local_context.table_provider("events").await?;
            use_events_table(&self.local_context, table)
                .await
                .map_err(other)?;
        }
        self.tables_made += 1;
        let directory = self
            .tables
            .path()
            .join(format!("{name}-{}", self.tables_made));
        let file = directory.join("part-0.parquet");
        self.local_context
            .table(name)
            .await?
            .write_parquet(
                &file.to_string_lossy(),
                DataFrameWriteOptions::new().with_single_file_output(true),
                None,
            )
            .await?;
        self.cluster_context.deregister_table(name)?;
        if name == "events" {
            let (table, _) = sessionql::events_table::events_table(&directory, 4).map_err(other)?;
            use_events_table(&self.cluster_context, table)
                .await
                .map_err(other)?;
        } else {
            self.cluster_context
                .register_parquet(
                    name,
                    &directory.to_string_lossy(),
                    ParquetReadOptions::default(),
                )
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for ClusterDb {
    type Error = DFSqlLogicTestError;
    type ColumnType = DFColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DFColumnType>, DFSqlLogicTestError> {
        if let Some(done) = super::run_if_setting(&self.cluster_context, sql).await {
            return done;
        }
        if let Some(name) = super::created_table(sql) {
            let output = self.local.run(sql).await?;
            self.share_table(&name).await?;
            return Ok(output);
        }
        self.cluster.run(sql).await
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "sessionql-cluster"
    }

    async fn sleep(duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}
