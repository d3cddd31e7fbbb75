//! `sessionql bench`: the sessions query suite, timed on sessionql and on two
//! peers in the same run, on the same generated Parquet files: DataFusion
//! itself with the sessions written as plain window SQL (no sessionql
//! function), and DuckDB (its Python wheel, installed into a virtualenv in
//! the data directory when missing) with the same plain SQL.
//!
//! Every (engine, query) pair runs in a process of its own, so the peak
//! memory printed is that query's alone. The suite first checks that the
//! three engines agree on the session count, total duration and bounce count,
//! and says where the plain SQL cannot express sessionql's rules.
//!
//! Before each process the data files are read through once, so that every
//! engine starts with them in the page cache. Without it, a peer's query
//! that needs most of the machine's memory (DuckDB's plain SQL at 50M events:
//! 17–19 GiB) evicted the files, and the next engine to run, sessionql's
//! next query, read them from disk: query 6 at 50M took 11.0 s against 2.9 s
//! as a process of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use datafusion::arrow::util::display::array_value_to_string;
use datafusion::prelude::SessionContext;
use serde_json::json;

use crate::bench::ingest::generated_data;
use crate::engine::{Engine, run_statements};
use crate::error::{Result, SessionqlError};

/// The engines of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchEngine {
    /// sessionql: the `sessions` view over its UDFs.
    Sessionql,
    /// DataFusion with the sessions written as plain window SQL.
    Datafusion,
    /// DuckDB with the same plain SQL.
    Duckdb,
}

impl BenchEngine {
    fn name(self) -> &'static str {
        match self {
            BenchEngine::Sessionql => "sessionql",
            BenchEngine::Datafusion => "datafusion-sql",
            BenchEngine::Duckdb => "duckdb-sql",
        }
    }
}

/// First day of the generated 90-day data set and the start of its last week.
const LAST_WEEK_START: &str = "2024-03-24 00:00:00";

/// What the plain SQL of the peers does not do as sessionql does.
const PEER_DIFFERENCES: &str = "peers' plain SQL: no 24-hour cap on derived sessions; \
entry values from the first event (not the first pageview); channel_type a five-way CASE \
(not the channel table); entry_pathname from the pathname column";

/// The suite: number, short name, and the SQL (per dialect where needed).
fn suite_sql(number: usize, engine: BenchEngine, copy_target: &Path) -> String {
    let duckdb = engine == BenchEngine::Duckdb;
    let per_day_by_channel = |filter: &str| {
        format!(
            "SELECT date_trunc('day', start_timestamp) AS day, channel_type, count(*) AS sessions, \
             avg(session_duration) AS avg_duration, \
             avg(CASE WHEN is_bounce THEN 1.0 WHEN NOT is_bounce THEN 0.0 END) AS bounce_rate \
             FROM sessions {filter} GROUP BY 1, 2 ORDER BY 1, 2"
        )
    };
    match number {
        // The same codec for every engine (DuckDB's default; DataFusion's
        // is zstd), so the query measures building the table, not a codec.
        1 if duckdb => format!(
            "COPY (SELECT * FROM sessions) TO '{}' (FORMAT PARQUET, COMPRESSION snappy)",
            copy_target.display()
        ),
        1 => format!(
            "COPY (SELECT * FROM sessions) TO '{}' STORED AS PARQUET \
             OPTIONS ('format.compression' 'snappy')",
            copy_target.display()
        ),
        2 => "SELECT count(*) FROM sessions".into(),
        3 => per_day_by_channel(""),
        4 => {
            let p90 = if duckdb {
                "quantile_cont(session_duration, 0.9)"
            } else {
                "approx_percentile_cont(0.9) WITHIN GROUP (ORDER BY session_duration)"
            };
            format!(
                "SELECT entry_pathname, count(*) AS sessions, median(session_duration) AS median_duration, \
                 {p90} AS p90_duration FROM sessions GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20"
            )
        }
        5 if duckdb => per_day_by_channel(&format!(
            "WHERE start_timestamp >= TIMESTAMPTZ '{LAST_WEEK_START}+00'"
        )),
        5 => per_day_by_channel(&format!(
            "WHERE start_timestamp >= TIMESTAMP '{LAST_WEEK_START}'"
        )),
        6 => "SELECT event, count(DISTINCT session_id) AS sessions FROM session_events \
              GROUP BY 1 ORDER BY 1"
            .into(),
        _ => "SELECT count(*), max(timestamp), sum(length(uuid)), sum(length(event)), \
              sum(length(distinct_id)), sum(length(session_id)), sum(length(current_url)), \
              sum(length(referring_domain)), sum(length(utm_source)), sum(length(utm_medium)), \
              sum(length(utm_campaign)), sum(length(utm_term)), sum(length(utm_content)), \
              sum(length(gclid)), sum(length(gad_source)), sum(length(fbclid)), \
              sum(length(external_click_url)) FROM events"
            .into(),
    }
}

const QUERY_NAMES: [&str; 7] = [
    "1 full sessions table (COPY to Parquet, snappy)",
    "2 count(*) FROM sessions",
    "3 per day x channel: sessions, avg duration, bounce rate",
    "4 median/p90 duration by entry_pathname, top 20",
    "5 query 3, last 7 of 90 days",
    "6 sessions per event name (session_events)",
    "7 bare scan of the columns sessions reads",
];

/// Session count, total duration and bounces: what the engines must agree on.
const AGREEMENT_SQL: &str = "SELECT count(*) AS sessions, sum(session_duration) AS total_duration, \
     count(*) FILTER (WHERE is_bounce) AS bounces FROM sessions";

/// The peers' sessions, as an analyst would write them in plain SQL.
fn peer_setup_sql(engine: BenchEngine, events: &Path) -> String {
    let duckdb = engine == BenchEngine::Duckdb;
    let micros = |expression: &str| {
        if duckdb {
            format!("epoch_us({expression})")
        } else {
            format!("CAST({expression} AS BIGINT)")
        }
    };
    // Whole seconds (DuckDB's `/` divides as floats, `//` as integers).
    let seconds = |micros: &str| {
        if duckdb {
            format!("{micros} // 1000000")
        } else {
            format!("{micros} / 1000000")
        }
    };
    let first = |column: &str| {
        if duckdb {
            format!("arg_min({column}, timestamp)")
        } else {
            format!("first_value({column} ORDER BY timestamp)")
        }
    };
    let events_table = if duckdb {
        format!(
            "CREATE VIEW events AS SELECT * FROM read_parquet('{}/**/*.parquet');\n",
            events.display()
        )
    } else {
        format!(
            "CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION '{}/';\n",
            events.display()
        )
    };
    let columns = "uuid, event, distinct_id, timestamp, current_url, pathname, referring_domain, \
                   utm_source, utm_medium, gclid";
    let no_session_id = "(session_id IS NULL OR session_id IN ('', 'null'))";
    format!(
        "{events_table}\
CREATE VIEW session_events AS \
SELECT {columns}, distinct_id || '#' || CAST(sum(is_new) OVER (PARTITION BY distinct_id ORDER BY timestamp \
  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS VARCHAR) AS session_id \
FROM (SELECT {columns}, CASE WHEN previous IS NULL OR {now_us} - {previous_us} > 1800000000 THEN 1 ELSE 0 END AS is_new \
      FROM (SELECT {columns}, lag(timestamp) OVER (PARTITION BY distinct_id ORDER BY timestamp) AS previous \
            FROM events WHERE {no_session_id}) AS ordered) AS marked \
UNION ALL SELECT {columns}, session_id FROM events WHERE NOT {no_session_id};\n\
CREATE VIEW sessions AS \
SELECT session_id, start_timestamp, end_timestamp, session_duration, entry_current_url, entry_pathname, \
  entry_referring_domain, entry_utm_source, entry_utm_medium, entry_gclid, pageview_count, \
  autocapture_count, event_count, \
  CASE WHEN entry_gclid IS NOT NULL OR entry_utm_medium IN ('cpc', 'ppc', 'paid') THEN 'Paid Search' \
       WHEN entry_utm_medium = 'email' THEN 'Email' \
       WHEN entry_referring_domain IS NULL OR entry_referring_domain = '$direct' THEN 'Direct' \
       WHEN entry_referring_domain LIKE '%google.%' OR entry_referring_domain LIKE '%bing.%' \
         OR entry_referring_domain LIKE '%duckduckgo.%' THEN 'Organic Search' \
       ELSE 'Referral' END AS channel_type, \
  CASE WHEN pageview_count = 0 THEN NULL \
       ELSE NOT (pageview_count >= 2 OR autocapture_count > 0 OR session_duration >= 10) END AS is_bounce \
FROM (SELECT session_id, min(timestamp) AS start_timestamp, max(timestamp) AS end_timestamp, \
        {max_s} - {min_s} AS session_duration, \
        {entry_url} AS entry_current_url, {entry_path} AS entry_pathname, \
        {entry_referrer} AS entry_referring_domain, {entry_source} AS entry_utm_source, \
        {entry_medium} AS entry_utm_medium, {entry_gclid} AS entry_gclid, \
        count(DISTINCT uuid) FILTER (WHERE event IN ('$pageview', '$screen')) AS pageview_count, \
        count(DISTINCT uuid) FILTER (WHERE event = '$autocapture') AS autocapture_count, \
        count(DISTINCT uuid) AS event_count \
      FROM session_events GROUP BY session_id) AS per_session",
        now_us = micros("timestamp"),
        previous_us = micros("previous"),
        max_s = seconds(&micros("max(timestamp)")),
        min_s = seconds(&micros("min(timestamp)")),
        entry_url = first("current_url"),
        entry_path = first("pathname"),
        entry_referrer = first("referring_domain"),
        entry_source = first("utm_source"),
        entry_medium = first("utm_medium"),
        entry_gclid = first("gclid"),
    )
}

/// One measured (engine, query): wall seconds per run, peak MiB, first row.
#[derive(Debug, Clone, Default)]
struct Measured {
    times: Vec<f64>,
    peak_mib: f64,
    first_row: Vec<String>,
}

impl Measured {
    fn median(&self) -> f64 {
        let mut times = self.times.clone();
        times.sort_by(f64::total_cmp);
        times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// Runs `sql` `runs` times in this process on `engine` (sessionql or plain
/// DataFusion) and prints the measurement as one JSON line; the suite runs
/// this in a child process per query.
pub async fn run_one(engine: BenchEngine, events: &Path, runs: usize, sql: &str) -> Result<()> {
    let context: SessionContext = match engine {
        BenchEngine::Sessionql => {
            let engine = Engine::builder().events(events).build().await?;
            (*engine).clone()
        }
        _ => {
            let context = SessionContext::new();
            run_statements(&context, &peer_setup_sql(engine, events)).await?;
            context
        }
    };
    let mut times = Vec::new();
    let mut first_row = Vec::new();
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let (_, batches) = run_statements(&context, sql).await?;
        times.push(started.elapsed().as_secs_f64());
        first_row = match batches.iter().find(|batch| batch.num_rows() > 0) {
            Some(batch) => batch
                .columns()
                .iter()
                .map(|column| array_value_to_string(column, 0).unwrap_or_default())
                .collect(),
            None => Vec::new(),
        };
    }
    let peak_mib = crate::bench::peak_memory_mib().unwrap_or(f64::NAN);
    println!(
        "{}",
        json!({"times": times, "peak_mib": peak_mib, "first_row": first_row})
    );
    Ok(())
}

/// Options of the suite.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Events in the generated data set (90 days, seed 1).
    pub events: u64,
    /// Where generated data, outputs and the DuckDB virtualenv live.
    pub data: PathBuf,
    /// Runs per query; the median is reported.
    pub runs: usize,
    /// Engines to compare.
    pub engines: Vec<BenchEngine>,
    /// Numbers (1–7) of the queries to run; every query when empty.
    pub queries: Vec<usize>,
}

/// Runs the whole comparison and prints it.
pub fn bench_sessions(options: &SuiteOptions) -> Result<()> {
    let events_dir = generated_data(&options.data, options.events, "parquet")?;
    let mut engines = options.engines.clone();
    let duckdb_python = if engines.contains(&BenchEngine::Duckdb) {
        match duckdb_python(&options.data) {
            Ok(python) => Some(python),
            Err(reason) => {
                println!("DuckDB left out: {reason}");
                engines.retain(|engine| *engine != BenchEngine::Duckdb);
                None
            }
        }
    } else {
        None
    };
    let runner = Runner {
        events_dir: &events_dir,
        duckdb_python: duckdb_python.as_deref(),
    };
    println!(
        "sessionql bench: {} generated events (90 days, seed 1) in {}; {} runs per query, median (min-max)",
        options.events,
        events_dir.display(),
        options.runs
    );
    println!("{PEER_DIFFERENCES}");
    println!(
        "the data files are read through before each process: every engine starts with them cached"
    );
    println!();
    println!("agreement (sessions, total duration s, bounces):");
    for engine in &engines {
        match runner.measure(*engine, 1, AGREEMENT_SQL) {
            Ok(measured) => println!("  {:<15} {}", engine.name(), measured.first_row.join(", ")),
            Err(error) => println!("  {:<15} failed: {error}", engine.name()),
        }
    }
    println!();
    println!(
        "{:<58} {:<15} {:>9} {:>17} {:>12} {:>9} {:>8}",
        "query", "engine", "median s", "min-max s", "events/s", "peak MiB", "ratio"
    );
    for (index, name) in QUERY_NAMES.iter().enumerate() {
        if !options.queries.is_empty() && !options.queries.contains(&(index + 1)) {
            continue;
        }
        let mut own_median = f64::NAN;
        for engine in &engines {
            let copy_target = options
                .data
                .join(format!("sessions-{}.parquet", engine.name()));
            let sql = suite_sql(index + 1, *engine, &copy_target);
            match runner.measure(*engine, options.runs, &sql) {
                Ok(measured) => {
                    let median = measured.median();
                    let (low, high) = measured
                        .times
                        .iter()
                        .fold((f64::INFINITY, 0.0f64), |(low, high), time| {
                            (low.min(*time), high.max(*time))
                        });
                    let ratio = if *engine == BenchEngine::Sessionql {
                        own_median = median;
                        String::new()
                    } else {
                        format!("{:.2}x", own_median / median)
                    };
                    println!(
                        "{:<58} {:<15} {:>9.3} {:>17} {:>12.0} {:>9.0} {:>8}",
                        name,
                        engine.name(),
                        median,
                        format!("{low:.3}-{high:.3}"),
                        options.events as f64 / median,
                        measured.peak_mib,
                        ratio
                    );
                }
                Err(error) => println!("{name:<58} {:<15} failed: {error}", engine.name()),
            }
            let _ = std::fs::remove_file(&copy_target);
            let _ = std::fs::remove_dir_all(&copy_target);
        }
    }
    println!();
    println!("ratio = sessionql's median time / the peer's (below 1: sessionql is faster)");
    Ok(())
}

struct Runner<'a> {
    events_dir: &'a Path,
    duckdb_python: Option<&'a Path>,
}

impl Runner<'_> {
    /// Runs one query in a child process and reads its JSON line.
    fn measure(&self, engine: BenchEngine, runs: usize, sql: &str) -> Result<Measured> {
        read_through(self.events_dir)?;
        let mut command = match (engine, self.duckdb_python) {
            (BenchEngine::Duckdb, Some(python)) => {
                let mut command = Command::new(python);
                command
                    .arg(duckdb_script())
                    .arg(runs.to_string())
                    .arg(peer_setup_sql(engine, self.events_dir))
                    .arg(sql);
                command
            }
            (BenchEngine::Duckdb, None) => {
                return Err(SessionqlError::Invalid("DuckDB is not available".into()));
            }
            _ => {
                let executable = std::env::current_exe().map_err(|error| {
                    SessionqlError::Invalid(format!("cannot find the sessionql binary: {error}"))
                })?;
                let mut command = Command::new(executable);
                command
                    .args(["bench", "run-one", "--engine"])
                    .arg(match engine {
                        BenchEngine::Sessionql => "sessionql",
                        _ => "datafusion",
                    })
                    .arg("--events")
                    .arg(self.events_dir)
                    .arg("--runs")
                    .arg(runs.to_string())
                    .arg(sql);
                command
            }
        };
        let output = command
            .output()
            .map_err(|error| SessionqlError::Invalid(format!("cannot start the run: {error}")))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let Some(line) = stdout.lines().rev().find(|line| line.starts_with('{')) else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().last().unwrap_or("no output");
            return Err(SessionqlError::Invalid(last.to_string()));
        };
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|error| SessionqlError::Invalid(format!("unreadable result: {error}")))?;
        Ok(Measured {
            times: value["times"]
                .as_array()
                .map(|times| times.iter().filter_map(serde_json::Value::as_f64).collect())
                .unwrap_or_default(),
            peak_mib: value["peak_mib"].as_f64().unwrap_or(f64::NAN),
            first_row: value["first_row"]
                .as_array()
                .map(|row| {
                    row.iter()
                        .map(|value| value.as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// Reads every file under `dir` once, which brings the files back into the
/// page cache if the previous process's memory pushed them out.
fn read_through(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| SessionqlError::EventsPath {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| SessionqlError::EventsPath {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        if path.is_dir() {
            read_through(&path)?;
            continue;
        }
        let read = std::fs::File::open(&path)
            .and_then(|mut file| std::io::copy(&mut file, &mut std::io::sink()));
        read.map_err(|source| SessionqlError::EventsPath { path, source })?;
    }
    Ok(())
}

/// The DuckDB runner script shipped in the repository.
fn duckdb_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bench/duckdb_run.py")
}

/// A Python with the `duckdb` wheel: a virtualenv in the data directory,
/// created and filled on first use.
fn duckdb_python(data: &Path) -> std::result::Result<PathBuf, String> {
    let venv = data.join("duckdb-venv");
    let python = venv.join("bin/python");
    let has_duckdb = |python: &Path| {
        Command::new(python)
            .args(["-c", "import duckdb, pytz"])
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if has_duckdb(&python) {
        return Ok(python);
    }
    eprintln!("installing DuckDB's Python wheel into {}", venv.display());
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|error| format!("python3 -m venv: {error}"))?;
    if !created.status.success() {
        return Err(format!(
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&created.stderr).trim()
        ));
    }
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "duckdb", "pytz"])
        .output()
        .map_err(|error| format!("pip: {error}"))?;
    if !installed.status.success() || !has_duckdb(&python) {
        return Err(format!(
            "pip install duckdb failed: {}",
            String::from_utf8_lossy(&installed.stderr).trim()
        ));
    }
    Ok(python)
}
