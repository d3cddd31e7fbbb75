//! The command line: `sessionql query`, `shell`, `serve`, `ingest`, `generate`, `bench`.
//! Every command builds its session through [`crate::Engine`].

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};

use crate::bench::sessions_suite::{BenchEngine, SuiteOptions};
use crate::engine::{Engine, sets_memory_limit};
use crate::error::{Result, SessionqlError};
use crate::events_table::LoadReport;
use crate::generate::{GenerateOptions, GeneratedFormat, generate};
use crate::ingest::{IngestOptions, IngestSummary, ingest};
use crate::output::{OutputFormat, write_results};
use crate::postgres::auth::{PasswordMethod, PgUsers};
use crate::postgres::{PgServeOptions, serve_postgres};

/// Skipped lines printed in full before the rest are only counted.
const SKIPPED_LINES_SHOWN: usize = 20;

/// sessionql: session analytics in plain SQL.
#[derive(Debug, Parser)]
#[command(name = "sessionql", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run SQL (several statements separated by `;` run in order; the last
    /// result is printed).
    Query {
        /// The SQL text.
        sql: String,
        /// Events and session settings.
        #[command(flatten)]
        engine: EngineArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Give up (with an error) on a query still running after this many
        /// seconds.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },
    /// An interactive SQL prompt with history.
    Shell {
        /// Events and session settings.
        #[command(flatten)]
        engine: EngineArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Serve the engine over Arrow Flight SQL and, with --pg-port, the
    /// PostgreSQL wire protocol (loopback by default).
    Serve {
        /// Events and session settings.
        #[command(flatten)]
        engine: EngineArgs,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Port to bind (0 picks a free one; the bound address is printed).
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// Require this bearer token (or it as the password in the handshake).
        #[arg(long, value_name = "TOKEN", env = "SESSIONQL_AUTH_TOKEN")]
        auth_token: Option<String>,
        /// Require a user from this file (`user:password` per line) in the handshake.
        #[arg(long, value_name = "FILE")]
        users_file: Option<PathBuf>,
        /// Most memory one query may use, in MiB; a query needing more fails cleanly.
        #[arg(long, value_name = "MIB")]
        query_memory_limit_mb: Option<usize>,
        /// Serve over TLS with this PEM certificate chain (needs --tls-key).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Also serve the PostgreSQL wire protocol on this port (psql, BI tools).
        #[arg(long, value_name = "PORT")]
        pg_port: Option<u16>,
        /// How Postgres clients prove their password (with --users-file or --auth-token).
        #[arg(long, value_enum, default_value_t = PasswordMethod::Scram)]
        pg_password_method: PasswordMethod,
        /// Serve only the Postgres protocol (needs --pg-port).
        #[arg(long, requires = "pg_port")]
        no_flight_sql: bool,
    },
    /// Measure speed (printed, never asserted).
    /// With no benchmark named: the sessions query suite against DataFusion
    /// plain SQL and DuckDB.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        /// Which benchmark (default: the sessions suite).
        #[command(subcommand)]
        suite: Option<BenchSuite>,
        /// Options of the sessions suite.
        #[command(flatten)]
        sessions: SessionsBenchArgs,
    },
    /// Ingest PostHog events (exports or capture request bodies, one JSON per
    /// line, gzip accepted) into date-partitioned, sorted Parquet under --out.
    Ingest {
        /// Input files or directories; `-` reads standard input.
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<PathBuf>,
        /// The events directory to write (queries read it with --events).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Receive time (ISO 8601) for events whose payload has none, as in
        /// plain exports; needed for events without a timestamp.
        #[arg(long, value_name = "TIME")]
        received_at: Option<String>,
        /// Where rejected lines go (default OUT/_quarantine/<run>.ndjson).
        #[arg(long, value_name = "FILE")]
        quarantine: Option<PathBuf>,
        /// Most events per output file.
        #[arg(long, default_value_t = 1_000_000)]
        events_per_file: usize,
        /// Parsing threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// MiB of parsed events held in memory before spilling to disk.
        #[arg(long, value_name = "MIB", default_value_t = crate::ingest::DEFAULT_MEMORY_BUDGET_MIB)]
        memory_budget_mb: usize,
    },
    /// Run a Ballista scheduler that knows every sessionql function (feature
    /// `distributed`); clients connect with `--cluster df://HOST:PORT`.
    #[cfg(feature = "distributed")]
    Scheduler {
        /// Address to listen on (port 0 picks a free one; the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: SocketAddr,
        /// Seconds without a heartbeat after which an executor is taken for
        /// dead and its work moved to the others.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        executor_timeout: u64,
    },
    /// Run a Ballista executor that knows every sessionql function (feature
    /// `distributed`).
    #[cfg(feature = "distributed")]
    Executor {
        /// The scheduler, HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        scheduler: String,
        /// Address the executor binds to and advertises.
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: std::net::IpAddr,
        /// Arrow Flight port for shuffle data (0: a free one, printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// gRPC port for task launches (0: a free one, printed).
        #[arg(long, default_value_t = 0)]
        grpc_port: u16,
        /// Tasks run at once (default: one per core).
        #[arg(long, default_value_t = 0)]
        concurrency: usize,
        /// Directory for shuffle files (default: a temporary one, removed on exit).
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// Seconds between heartbeats to the scheduler.
        #[arg(long, value_name = "SECONDS", default_value_t = 5)]
        heartbeat: u64,
    },
    /// Generate realistic events (deterministic for a seed) as Parquet or PostHog NDJSON.
    Generate {
        /// Number of events.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// First day (UTC), YYYY-MM-DD.
        #[arg(long, default_value = "2024-01-01")]
        start: NaiveDate,
        /// Days covered.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Most events per file.
        #[arg(long, default_value_t = 1_000_000)]
        events_per_file: usize,
        /// Parquet (the events schema) or PostHog-shaped NDJSON (for `ingest`).
        #[arg(long, value_enum, default_value_t = GeneratedFormat::Parquet)]
        format: GeneratedFormat,
    },
}

/// Options of the sessions suite (`sessionql bench`).
#[derive(Debug, Clone, Args)]
pub struct SessionsBenchArgs {
    /// Events in the generated data set (90 days; generated once, cached).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Where generated data and the DuckDB virtualenv are kept.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Runs per query; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Engines to compare.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BenchEngine::Sessionql, BenchEngine::Datafusion, BenchEngine::Duckdb])]
    pub engines: Vec<BenchEngine>,
    /// Numbers of the suite's queries to run (1–7, comma-separated); all
    /// when absent. At 50M events the whole suite takes over ten minutes a
    /// run, one query a minute.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=7))]
    pub queries: Vec<u8>,
}

/// The benchmarks of `sessionql bench`.
#[derive(Debug, Subcommand)]
pub enum BenchSuite {
    /// One query on one engine in this process, printed as JSON (used by the suite).
    #[command(hide = true)]
    RunOne {
        /// sessionql or datafusion.
        #[arg(long, value_enum)]
        engine: BenchEngine,
        /// The events directory.
        #[arg(long)]
        events: PathBuf,
        /// Runs.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// The SQL.
        sql: String,
    },
    /// `sessionql ingest` on the generator's PostHog NDJSON (generated once, cached).
    Ingest {
        /// Events to generate and ingest.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Runs; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Parsing threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Where the generated input is kept between runs.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
    /// `channel_type` over synthetic rows covering every rule family.
    ChannelType {
        /// Rows to classify.
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        /// Runs of each query; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

/// Options shared by the commands that query events.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Events file or directory (Parquet, NDJSON or CSV); default: the shipped sample.
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,
    /// Idle gap in seconds that ends a derived session.
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<u64>,
    /// Longest span in seconds of a derived session.
    #[arg(long, value_name = "SECONDS")]
    pub max_session_duration: Option<u64>,
    /// Sessions at least this many seconds long are never bounces.
    #[arg(long, value_name = "SECONDS")]
    pub bounce_duration: Option<u64>,
    /// Channel table in PostHog's JSON format, replacing the built-in lists.
    #[arg(long, value_name = "FILE")]
    pub channel_definitions: Option<PathBuf>,
    /// Custom channel rules (JSON), tried before the built-in rules.
    #[arg(long, value_name = "FILE")]
    pub channel_rules: Option<PathBuf>,
    /// Run queries on the Ballista cluster whose scheduler is here
    /// (df://HOST:PORT; needs the `distributed` feature and Parquet events
    /// every executor can read).
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
}

impl EngineArgs {
    /// Builds the engine these options describe, reporting skipped lines on stderr.
    pub async fn build(&self) -> Result<Engine> {
        let mut builder = Engine::builder();
        if let Some(path) = &self.events {
            builder = builder.events(path);
        }
        if let Some(seconds) = self.idle_timeout {
            builder = builder.idle_timeout_seconds(seconds);
        }
        if let Some(seconds) = self.max_session_duration {
            builder = builder.max_session_duration_seconds(seconds);
        }
        if let Some(seconds) = self.bounce_duration {
            builder = builder.bounce_duration_seconds(seconds);
        }
        if let Some(path) = &self.channel_definitions {
            builder = builder.channel_definitions(path);
        }
        if let Some(path) = &self.channel_rules {
            builder = builder.channel_rules(path);
        }
        if let Some(url) = &self.cluster {
            builder = builder.cluster(url);
        }
        let engine = builder.build().await?;
        report_skipped_lines(engine.load_report());
        Ok(engine)
    }
}

fn report_skipped_lines(report: &LoadReport) {
    let skipped = &report.skipped_lines;
    for line in skipped.iter().take(SKIPPED_LINES_SHOWN) {
        eprintln!("warning: {line}");
    }
    if skipped.len() > SKIPPED_LINES_SHOWN {
        eprintln!(
            "warning: … and {} more lines skipped",
            skipped.len() - SKIPPED_LINES_SHOWN
        );
    }
    if !skipped.is_empty() {
        eprintln!(
            "warning: loaded {} events, skipped {} malformed lines",
            report.loaded_events,
            skipped.len()
        );
    }
}

fn report_ingest(summary: &IngestSummary, elapsed: std::time::Duration) {
    for input in &summary.unreadable {
        eprintln!("warning: {}: {}", input.path.display(), input.reason);
    }
    let events = summary.ingested + summary.duplicates;
    let seconds = elapsed.as_secs_f64().max(1e-3);
    eprintln!(
        "read {} lines from {} input(s): ingested {} events, {} duplicates, {} quarantined; \
         {} file(s) written in {:.1} s ({:.0} events/s, peak memory {:.0} MiB)",
        summary.lines,
        summary.inputs_read,
        summary.ingested,
        summary.duplicates,
        summary.quarantined,
        summary.files.len(),
        seconds,
        events as f64 / seconds,
        crate::bench::peak_memory_mib().unwrap_or(0.0),
    );
    if let Some(path) = &summary.quarantine_file {
        eprintln!(
            "rejected lines, with file, line and reason: {}",
            path.display()
        );
    }
}

impl Command {
    /// Whether the process may keep memory it frees for reuse a while longer
    /// before giving it back to the system: it ends when this command's work
    /// does (a query, a benchmark, an ingest, a generation), unlike a server
    /// or the shell, which wait for more work, and a query's SQL sets no
    /// memory limit (under one, memory matters more than time).
    pub fn may_keep_freed_memory(&self) -> bool {
        match self {
            Command::Query { sql, .. } => !sets_memory_limit(sql),
            Command::Bench { .. } | Command::Ingest { .. } | Command::Generate { .. } => true,
            _ => false,
        }
    }
}

/// Runs a parsed command line; errors become one line on stderr and exit code 1.
pub async fn run(cli: Cli) -> ExitCode {
    match execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Query {
            sql,
            engine,
            format,
            timeout,
        } => {
            let engine = engine.build().await?;
            let (schema, batches) = match timeout {
                None => engine.run_statements(&sql).await?,
                Some(seconds) => tokio::time::timeout(
                    std::time::Duration::from_secs(seconds),
                    engine.run_statements(&sql),
                )
                .await
                .map_err(|_| SessionqlError::TimedOut { seconds })??,
            };
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            write_results(&mut out, format, &schema, &batches)
                .map_err(|error| SessionqlError::Query(error.into()))?;
            out.flush().map_err(|source| SessionqlError::Write {
                path: PathBuf::from("<stdout>"),
                source,
            })?;
            Ok(())
        }
        Command::Shell { engine, format } => {
            let engine = engine.build().await?;
            crate::shell::run_shell(&engine, format).await
        }
        Command::Serve {
            engine,
            host,
            port,
            auth_token,
            users_file,
            query_memory_limit_mb,
            tls_cert,
            tls_key,
            pg_port,
            pg_password_method,
            no_flight_sql,
        } => {
            let users = match &users_file {
                Some(path) => crate::flight::auth::Credentials::read_users_file(path)?,
                None => Default::default(),
            };
            let tls = tls_cert
                .zip(tls_key)
                .map(|(certificate, key)| crate::flight::TlsFiles { certificate, key });
            let pg_options = PgServeOptions {
                users: PgUsers::new(users.clone(), auth_token.clone()),
                password_method: pg_password_method,
                tls: tls.clone(),
            };
            let options = crate::flight::ServeOptions {
                credentials: crate::flight::auth::Credentials {
                    token: auth_token,
                    users,
                },
                query_memory_limit: query_memory_limit_mb
                    .map(|mib| mib.saturating_mul(1024 * 1024)),
                tls,
            };
            let engine = engine.build().await?;
            let Some(pg_port) = pg_port else {
                return crate::flight::serve(engine, SocketAddr::new(host, port), options).await;
            };
            let (listener, bound) = crate::listen::bind(SocketAddr::new(host, pg_port)).await?;
            crate::listen::announce("Postgres", bound);
            let postgres = serve_postgres(engine.context().clone(), listener, pg_options);
            if no_flight_sql {
                tokio::select! {
                    result = postgres => result,
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            } else {
                let flight = crate::flight::serve(engine, SocketAddr::new(host, port), options);
                // Flight SQL returns on Ctrl-C; the Postgres loop ends with it.
                tokio::select! {
                    result = flight => result,
                    result = postgres => result,
                }
            }
        }
        Command::Bench {
            suite: None,
            sessions,
        } => {
            let options = SuiteOptions {
                events: sessions.events,
                data: sessions
                    .data
                    .unwrap_or_else(crate::bench::ingest::default_data_directory),
                runs: sessions.runs,
                engines: sessions.engines,
                queries: sessions.queries.into_iter().map(usize::from).collect(),
            };
            tokio::task::spawn_blocking(move || crate::bench::bench_sessions(&options))
                .await
                .map_err(|error| SessionqlError::Invalid(format!("benchmark stopped: {error}")))?
        }
        Command::Bench {
            suite:
                Some(BenchSuite::RunOne {
                    engine,
                    events,
                    runs,
                    sql,
                }),
            ..
        } => crate::bench::sessions_suite::run_one(engine, &events, runs, &sql).await,
        Command::Bench {
            suite: Some(BenchSuite::ChannelType { rows, runs }),
            ..
        } => crate::bench::bench_channel_type(rows, runs).await,
        Command::Bench {
            suite:
                Some(BenchSuite::Ingest {
                    events,
                    runs,
                    threads,
                    data,
                }),
            ..
        } => {
            let data = data.unwrap_or_else(crate::bench::ingest::default_data_directory);
            tokio::task::spawn_blocking(move || {
                crate::bench::bench_ingest(events, runs, threads, &data)
            })
            .await
            .map_err(|error| SessionqlError::Invalid(format!("benchmark stopped: {error}")))?
        }
        Command::Ingest {
            inputs,
            out,
            received_at,
            quarantine,
            events_per_file,
            threads,
            memory_budget_mb,
        } => {
            let received_at_us = received_at
                .map(|text| {
                    crate::event_rows::parse_timestamp_us(&text).map_err(|reason| {
                        SessionqlError::Invalid(format!("--received-at: {reason}"))
                    })
                })
                .transpose()?;
            let options = IngestOptions {
                received_at_us,
                quarantine,
                rows_per_file: events_per_file,
                threads,
                memory_budget_bytes: memory_budget_mb.saturating_mul(1024 * 1024),
                ..IngestOptions::new(inputs, out)
            };
            let started = std::time::Instant::now();
            let summary = tokio::task::spawn_blocking(move || ingest(&options))
                .await
                .map_err(|error| SessionqlError::Invalid(format!("ingest stopped: {error}")))??;
            report_ingest(&summary, started.elapsed());
            Ok(())
        }
        #[cfg(feature = "distributed")]
        Command::Scheduler {
            bind,
            executor_timeout,
        } => {
            let (listener, bound) = crate::listen::bind(bind).await?;
            crate::listen::announce("Ballista scheduler", bound);
            let options = crate::distributed::scheduler::SchedulerOptions {
                executor_timeout_seconds: executor_timeout,
            };
            tokio::select! {
                result = crate::distributed::scheduler::run_scheduler(listener, &options) => result,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        #[cfg(feature = "distributed")]
        Command::Executor {
            scheduler,
            bind_host,
            port,
            grpc_port,
            concurrency,
            work_dir,
            heartbeat,
        } => {
            let (scheduler_host, scheduler_port) = scheduler
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.to_string(), port.parse::<u16>().ok()?)))
                .ok_or_else(|| {
                    SessionqlError::Invalid(format!("--scheduler {scheduler}: expected HOST:PORT"))
                })?;
            let options = crate::distributed::executor::ExecutorOptions {
                scheduler_host,
                scheduler_port,
                bind_host,
                flight_port: port,
                grpc_port,
                concurrency,
                work_dir,
                heartbeat_seconds: heartbeat,
            };
            let ports = crate::distributed::executor::choose_ports(&options)?;
            crate::listen::announce(
                "Ballista executor",
                SocketAddr::new(bind_host, ports.flight),
            );
            crate::distributed::executor::run_executor(&options, ports).await
        }
        Command::Generate {
            events,
            out,
            seed,
            start,
            days,
            events_per_file,
            format,
        } => {
            let options = GenerateOptions {
                events,
                out,
                seed,
                start,
                days,
                events_per_file,
                format,
            };
            let summary = tokio::task::spawn_blocking(move || generate(&options))
                .await
                .map_err(|error| {
                    SessionqlError::Invalid(format!("generator stopped: {error}"))
                })??;
            eprintln!(
                "wrote {} events in {} sessions to {} file(s)",
                summary.events,
                summary.sessions,
                summary.files.len()
            );
            for file in summary.files {
                println!("{}", file.display());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(args: &[&str]) -> Command {
        let mut line = vec!["sessionql"];
        line.extend_from_slice(args);
        match Cli::try_parse_from(line) {
            Ok(cli) => cli.command,
            Err(error) => panic!("{args:?} should parse: {error}"),
        }
    }

    /// Commands that finish and exit may keep freed memory, unless a query
    /// sets a memory limit; the ones that wait for more work (servers, the
    /// shell) must not.
    #[test]
    fn one_shot_commands_are_told_apart_from_waiting_ones() {
        assert!(command(&["query", "SELECT 1"]).may_keep_freed_memory());
        assert!(
            !command(&[
                "query",
                "SET datafusion.runtime.memory_limit = '4G'; SELECT 1"
            ])
            .may_keep_freed_memory()
        );
        assert!(command(&["bench", "--events", "1000"]).may_keep_freed_memory());
        assert!(command(&["ingest", "--out", "/tmp/x", "-"]).may_keep_freed_memory());
        assert!(command(&["generate", "--out", "/tmp/x"]).may_keep_freed_memory());
        assert!(!command(&["shell"]).may_keep_freed_memory());
        assert!(!command(&["serve"]).may_keep_freed_memory());
    }
}
