//! The `sessionql` binary, run for real: queries on the shipped sample and on
//! small hand-made files, output formats, settings, the shell, the generator,
//! and every kind of bad input, which must give one clear error line and never
//! a panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

mod support;

use support::{run, sessionql, stderr, stdout, write_file};

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;

/// A bad input fails with exit code 1 and one `error:` line, no panic.
fn assert_clean_failure(output: &Output, expected: &[&str]) {
    let message = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {message}");
    assert!(message.starts_with("error: "), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    for part in expected {
        assert!(message.contains(part), "expected {part:?} in {message}");
    }
}

/// Two users: u1 has two pageviews 5 minutes apart and one 40 minutes later
/// (two derived sessions), u2 one given session.
const EVENTS_NDJSON: &str = r#"{"uuid": "e1", "event": "$pageview", "distinct_id": "u1", "timestamp": "2024-01-01T00:00:00Z", "current_url": "https://a.com/home", "referring_domain": "$direct", "properties": {"$browser": "Firefox"}}
{"uuid": "e2", "event": "$pageview", "distinct_id": "u1", "timestamp": "2024-01-01T00:05:00Z", "current_url": "https://a.com/pricing", "properties": {"$browser": "Firefox"}}
{"uuid": "e3", "event": "$pageview", "distinct_id": "u1", "timestamp": "2024-01-01T00:45:00Z", "current_url": "https://a.com/blog", "referring_domain": "www.google.com"}
{"uuid": "e4", "event": "$pageview", "distinct_id": "u2", "timestamp": "2024-01-01T01:00:00+01:00", "session_id": "given-1", "current_url": "https://a.com/", "utm_source": "newsletter", "utm_medium": "email", "plan": "pro"}
"#;

#[test]
fn query_prints_an_aligned_table() {
    let directory = tempfile::tempdir().unwrap();
    let events = write_file(directory.path(), "events.ndjson", EVENTS_NDJSON);
    let output = run(&[
        "query",
        "--events",
        events.to_str().unwrap(),
        "SELECT entry_pathname, channel_type, session_duration FROM sessions \
         ORDER BY start_timestamp, entry_pathname",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    // e4's time is 01:00+01:00, i.e. midnight UTC, the same start as u1's
    // first session (e1): the pathname decides between the two.
    let expected = "\
+----------------+----------------+------------------+
| entry_pathname | channel_type   | session_duration |
+----------------+----------------+------------------+
| /              | Email          | 0                |
| /home          | Direct         | 300              |
| /blog          | Organic Search | 0                |
+----------------+----------------+------------------+
";
    assert_eq!(stdout(&output), expected);
}

#[test]
fn output_formats() {
    let directory = tempfile::tempdir().unwrap();
    let events = write_file(directory.path(), "events.jsonl", EVENTS_NDJSON);
    let events = events.to_str().unwrap();
    let sql = "SELECT distinct_id, count(*) AS sessions FROM sessions GROUP BY 1 ORDER BY 1";

    let csv = run(&["query", "--events", events, "--format", "csv", sql]);
    assert_eq!(stdout(&csv), "distinct_id,sessions\nu1,2\nu2,1\n");

    let json = run(&["query", "--events", events, "--format", "json", sql]);
    let parsed: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!([{"distinct_id": "u1", "sessions": 2}, {"distinct_id": "u2", "sessions": 1}])
    );

    let ndjson = run(&["query", "--events", events, "--format", "ndjson", sql]);
    assert_eq!(
        stdout(&ndjson),
        "{\"distinct_id\":\"u1\",\"sessions\":2}\n{\"distinct_id\":\"u2\",\"sessions\":1}\n"
    );

    // Lists print in CSV too (Arrow's own CSV writer refuses them).
    let urls = run(&[
        "query",
        "--events",
        events,
        "--format",
        "csv",
        "SELECT urls FROM sessions WHERE distinct_id = 'u2'",
    ]);
    assert_eq!(stdout(&urls), "urls\n[https://a.com/]\n");
}

#[test]
fn statements_run_in_order_and_settings_apply() {
    let directory = tempfile::tempdir().unwrap();
    let events = write_file(directory.path(), "events.ndjson", EVENTS_NDJSON);
    let events = events.to_str().unwrap();
    // With a one-hour idle timeout u1's three pageviews are one session.
    let output = run(&[
        "query",
        "--events",
        events,
        "--format",
        "csv",
        "SET sessionql.session_idle_timeout_seconds = 3600; SELECT count(*) AS n FROM sessions",
    ]);
    assert_eq!(stdout(&output), "n\n2\n", "{}", stderr(&output));
    // The same through the command-line option.
    let output = run(&[
        "query",
        "--events",
        events,
        "--idle-timeout",
        "3600",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM sessions",
    ]);
    assert_eq!(stdout(&output), "n\n2\n");
    // Extra top-level keys are kept in properties.
    let output = run(&[
        "query",
        "--events",
        events,
        "--format",
        "csv",
        "SELECT properties->>'plan' AS plan FROM events WHERE uuid = 'e4'",
    ]);
    assert_eq!(stdout(&output), "plan\npro\n");
}

#[test]
fn the_sample_answers_the_readme_query() {
    let output = run(&[
        "query",
        "--format",
        "csv",
        "SELECT count(*) AS sessions, sum(event_count) AS events FROM sessions",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let mut lines = text.lines().skip(1);
    let values: Vec<u64> = lines
        .next()
        .unwrap()
        .split(',')
        .map(|value| value.parse().unwrap())
        .collect();
    // Thousands of sessions; distinct events are the 30,000 written minus the duplicates.
    assert!(values[0] > 2_000, "{text}");
    assert!(values[1] > 29_000 && values[1] <= 30_000, "{text}");
    let channels = run(&[
        "query",
        "SELECT channel_type, count(*) FROM sessions GROUP BY 1",
    ]);
    assert!(channels.status.success());
    assert!(stdout(&channels).contains("Direct"));
}

#[test]
fn malformed_lines_are_reported_and_the_rest_loads() {
    let directory = tempfile::tempdir().unwrap();
    let text = format!(
        "{}not json at all\n[1, 2]\n{{\"uuid\": \"x\", \"event\": \"$pageview\", \"timestamp\": \"2024-01-01T00:00:00Z\"}}\n{{\"uuid\": \"y\", \"event\": \"e\", \"distinct_id\": \"u\", \"timestamp\": \"soon\"}}\n",
        EVENTS_NDJSON
    );
    let events = write_file(directory.path(), "events.ndjson", &text);
    let output = run(&[
        "query",
        "--events",
        events.to_str().unwrap(),
        "--format",
        "csv",
        "SELECT count(*) AS n FROM events",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "n\n4\n");
    let warnings = stderr(&output);
    let file = events.display().to_string();
    for expected in [
        format!("{file}:5: not valid JSON"),
        format!("{file}:6: not a JSON object"),
        format!("{file}:7: missing required field 'distinct_id'"),
        format!("{file}:8: timestamp 'soon' is not an ISO 8601"),
        "loaded 4 events, skipped 4 malformed lines".to_string(),
    ] {
        assert!(warnings.contains(&expected), "{expected:?} in {warnings}");
    }
}

#[test]
fn csv_events_load_by_header_name() {
    let directory = tempfile::tempdir().unwrap();
    let events = write_file(
        directory.path(),
        "events.csv",
        "timestamp,event,uuid,distinct_id,current_url\n\
         2024-01-01 00:00:00,$pageview,c1,u1,https://a.com/x\n\
         2024-01-01 00:00:20,$pageview,c2,u1\n\
         2024-01-01 00:00:30,$pageview,c3,u1,https://a.com/z\n",
    );
    let output = run(&[
        "query",
        "--events",
        events.to_str().unwrap(),
        "--format",
        "csv",
        "SELECT entry_pathname, exit_pathname, session_duration FROM sessions",
    ]);
    assert_eq!(
        stdout(&output),
        "entry_pathname,exit_pathname,session_duration\n/x,/z,30\n"
    );
    assert!(
        stderr(&output).contains(":3: has 4 fields, the header has 5"),
        "{}",
        stderr(&output)
    );

    let missing = write_file(directory.path(), "missing.csv", "uuid,event,timestamp\n");
    let output = run(&["query", "--events", missing.to_str().unwrap(), "SELECT 1"]);
    assert_clean_failure(
        &output,
        &["missing.csv", "missing required column 'distinct_id'"],
    );
}

#[test]
fn channel_files_from_the_command_line() {
    let rules = "tests/data/channels/rules.json";
    let output = run(&[
        "query",
        "--channel-rules",
        rules,
        "--format",
        "csv",
        "SELECT channel_type('partner-b', NULL, NULL, NULL, NULL, NULL, NULL) AS channel",
    ]);
    assert_eq!(
        stdout(&output),
        "channel\nPartners\n",
        "{}",
        stderr(&output)
    );

    let output = run(&[
        "query",
        "--channel-definitions",
        "tests/data/channels/malformed_definitions.json",
        "SELECT 1",
    ]);
    assert_clean_failure(
        &output,
        &["malformed_definitions.json: row 2: kind must be"],
    );

    // A bad file given with SET is refused at once and the session keeps the
    // built-in table.
    let output = run(&[
        "query",
        "SET sessionql.channel_definitions = 'tests/data/channels/missing.json'",
    ]);
    assert_clean_failure(&output, &["missing.json"]);
}

#[test]
fn bad_input_gives_one_clear_error() {
    let output = run(&["query", "SELEC count(*) FROM sessions"]);
    assert_clean_failure(&output, &["SELEC"]);

    let output = run(&["query", "SELECT no_such_column FROM sessions"]);
    assert_clean_failure(&output, &["no_such_column"]);

    let output = run(&["query", "SELECT * FROM no_such_table"]);
    assert_clean_failure(&output, &["no_such_table"]);

    let output = run(&["query", "--events", "/nonexistent/events", "SELECT 1"]);
    assert_clean_failure(&output, &["/nonexistent/events"]);

    let output = run(&[
        "query",
        "SET sessionql.session_idle_timeout_seconds = 'soon'",
    ]);
    assert_clean_failure(&output, &["session_idle_timeout_seconds"]);

    let output = run(&["query", ""]);
    assert_clean_failure(&output, &["no SQL statement"]);

    let directory = tempfile::tempdir().unwrap();
    let empty = directory.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = run(&["query", "--events", empty.to_str().unwrap(), "SELECT 1"]);
    assert_clean_failure(&output, &["no event files"]);

    let not_parquet = write_file(directory.path(), "broken.parquet", "not parquet");
    let output = run(&[
        "query",
        "--events",
        not_parquet.to_str().unwrap(),
        "SELECT 1",
    ]);
    assert_clean_failure(&output, &["broken.parquet", "not a readable Parquet file"]);
}

#[test]
fn a_query_past_its_timeout_is_given_up_with_an_error() {
    // 30,000 × 30,000 joined rows: minutes in a debug build.
    let started = std::time::Instant::now();
    let output = run(&[
        "query",
        "--timeout",
        "1",
        "SELECT count(*) FROM events a CROSS JOIN events b WHERE a.uuid < b.uuid",
    ]);
    assert_clean_failure(&output, &["still running after 1 s", "--timeout"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // A query within its limit answers as usual.
    let output = run(&[
        "query",
        "--timeout",
        "60",
        "--format",
        "csv",
        "SELECT count(*) FROM sessions",
    ]);
    assert_eq!(stdout(&output), "count(*)\n4937\n", "{}", stderr(&output));
}

/// Writes one batch of `columns` as a Parquet file.
fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef, bool)>) {
    let batch = RecordBatch::try_from_iter_with_nullable(columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn strings(values: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

#[test]
fn parquet_file_missing_a_required_column_is_named() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("no_timestamp.parquet");
    write_parquet(
        &path,
        vec![
            ("uuid", strings(&["x"]), false),
            ("event", strings(&["x"]), false),
            ("distinct_id", strings(&["x"]), false),
        ],
    );
    let output = run(&["query", "--events", path.to_str().unwrap(), "SELECT 1"]);
    assert_clean_failure(
        &output,
        &[
            "no_timestamp.parquet",
            "missing required column 'timestamp'",
        ],
    );
}

#[test]
fn parquet_with_only_some_columns_loads_the_rest_as_null() {
    let directory = tempfile::tempdir().unwrap();
    // Nullable columns and millisecond timestamps without a zone, as other
    // tools write them.
    let timestamps = TimestampMillisecondArray::from(vec![1_704_067_200_000, 1_704_067_212_500]);
    write_parquet(
        &directory.path().join("narrow.parquet"),
        vec![
            ("uuid", strings(&["n1", "n2"]), true),
            ("event", strings(&["$pageview", "$pageview"]), true),
            ("distinct_id", strings(&["u", "u"]), true),
            ("timestamp", Arc::new(timestamps), true),
        ],
    );
    let output = run(&[
        "query",
        "--events",
        directory.path().to_str().unwrap(),
        "--format",
        "csv",
        "SELECT start_timestamp, session_duration, pageview_count, entry_current_url IS NULL AS no_url, is_bounce FROM sessions",
    ]);
    assert_eq!(
        stdout(&output),
        "start_timestamp,session_duration,pageview_count,no_url,is_bounce\n2024-01-01T00:00:00Z,12,2,true,false\n",
        "{}",
        stderr(&output)
    );
}

#[test]
fn shell_reads_statements_until_quit() {
    let directory = tempfile::tempdir().unwrap();
    let events = write_file(directory.path(), "events.ndjson", EVENTS_NDJSON);
    let mut child = sessionql()
        .args([
            "shell",
            "--events",
            events.to_str().unwrap(),
            "--format",
            "csv",
        ])
        .env("HOME", directory.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"SELECT count(*) AS n\nFROM sessions;\nSELECT nope;\nSELECT 40 + 2 AS answer;\n\\q\n",
        )
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("n\n3\n"), "{text}");
    assert!(text.contains("answer\n42\n"), "{text}");
    assert!(stderr(&output).contains("error: "), "{}", stderr(&output));
}

#[test]
fn generator_is_deterministic_and_realistic() {
    let directory = tempfile::tempdir().unwrap();
    let first = directory.path().join("first");
    let second = directory.path().join("second");
    for out in [&first, &second] {
        let output = run(&[
            "generate",
            "--events",
            "20000",
            "--seed",
            "7",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let bytes = |dir: &Path| std::fs::read(dir.join("events-0000.parquet")).unwrap();
    assert_eq!(bytes(&first), bytes(&second));

    let events = first.to_str().unwrap();
    let sql = "SELECT
        count(*) AS events,
        round(100.0 * count(*) FILTER (WHERE session_id IS NULL) / count(*)) AS percent_without_session_id,
        count(*) - count(DISTINCT uuid) AS duplicates
      FROM events";
    let output = run(&["query", "--events", events, "--format", "csv", sql]);
    let text = stdout(&output);
    let values: Vec<f64> = text
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|value| value.parse().unwrap())
        .collect();
    assert_eq!(values[0], 20_000.0);
    assert!((10.0..=30.0).contains(&values[1]), "{text}");
    assert!(values[2] > 0.0, "{text}");

    // Some given sessions run past 24 hours, and the files are not in time order.
    let output = run(&[
        "query",
        "--events",
        events,
        "--format",
        "csv",
        "SELECT count(*) FILTER (WHERE session_duration > 86400) AS long_sessions FROM sessions",
    ]);
    let long_sessions: u64 = stdout(&output).lines().nth(1).unwrap().parse().unwrap();
    assert!(long_sessions > 0, "{}", stdout(&output));
    let output = run(&[
        "query",
        "--events",
        events,
        "--format",
        "csv",
        "SELECT count(*) AS out_of_order FROM (SELECT timestamp < lag(timestamp) OVER () AS earlier FROM events) WHERE earlier",
    ]);
    let out_of_order: u64 = stdout(&output).lines().nth(1).unwrap().parse().unwrap();
    assert!(out_of_order > 0);
}

#[test]
fn the_committed_sample_is_what_the_generator_makes() {
    let directory = tempfile::tempdir().unwrap();
    let output = run(&[
        "generate",
        "--events",
        "30000",
        "--seed",
        "42",
        "--out",
        directory.path().to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let generated = std::fs::read(directory.path().join("events-0000.parquet")).unwrap();
    let committed = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample/events-0000.parquet"),
    )
    .unwrap();
    assert!(
        generated == committed,
        "data/sample differs from `sessionql generate --events 30000 --seed 42`"
    );
}

/// The generator puts events with and without a session id in separate row
/// groups, so each half of the sessions view skips the other's row group of
/// the sample by its statistics.
#[test]
fn each_half_of_the_sessions_view_skips_the_other_halfs_row_groups() {
    let output = run(&["query", "EXPLAIN ANALYZE SELECT count(*) FROM sessions"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let plan = stdout(&output);
    assert_eq!(
        plan.matches("row_groups_pruned_statistics=2 total → 1 matched")
            .count(),
        2,
        "{plan}"
    );
}

/// Inside each row group of the sample, rows are ordered by (`distinct_id`,
/// `timestamp`), the order `ingest` writes, so a session's events are
/// neighbours; both row groups hold rows (the two kinds of events).
#[test]
fn generated_row_groups_are_sorted_by_user_and_time() {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::TimestampMicrosecondType;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample/events-0000.parquet");
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
    let row_groups = builder.metadata().num_row_groups();
    assert_eq!(row_groups, 2);
    for row_group in 0..row_groups {
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
        let batches: Vec<RecordBatch> = builder
            .with_row_groups(vec![row_group])
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut keys: Vec<(String, i64)> = Vec::new();
        for batch in &batches {
            let users = batch
                .column_by_name("distinct_id")
                .unwrap()
                .as_string::<i32>();
            let times = batch
                .column_by_name("timestamp")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            for row in 0..batch.num_rows() {
                assert!(users.is_valid(row) && times.is_valid(row));
                keys.push((users.value(row).to_owned(), times.value(row)));
            }
        }
        assert!(
            keys.len() > 1000,
            "row group {row_group}: {} rows",
            keys.len()
        );
        assert!(
            keys.windows(2).all(|pair| pair[0] <= pair[1]),
            "row group {row_group} is not sorted by (distinct_id, timestamp)"
        );
    }
}

#[test]
fn channel_type_benchmark_runs_and_reports() {
    let output = run(&["bench", "channel-type", "--rows", "20000", "--runs", "1"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("channel_type over 20000 rows"), "{text}");
    assert!(
        text.contains("rows/s") && text.contains("peak memory"),
        "{text}"
    );
}

/// Output of the sessions suite on 3,000 events, one run per query, with
/// `extra` arguments; the run must succeed.
fn sessions_bench(data: &tempfile::TempDir, engines: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "bench",
        "--events",
        "3000",
        "--runs",
        "1",
        "--engines",
        engines,
        "--data",
        data.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
}

/// Whether the suite's output has a line for `query` on `engine`.
fn ran_query(text: &str, query: usize, engine: &str) -> bool {
    text.lines()
        .any(|line| line.starts_with(&format!("{query} ")) && line.contains(engine))
}

/// The sessions suite runs every query on sessionql and on DataFusion's plain
/// SQL (DuckDB is left out here: it needs its wheel), after the agreement
/// check. Figures are printed, never asserted.
#[test]
fn sessions_benchmark_runs_every_query_on_every_engine() {
    let data = tempfile::tempdir().unwrap();
    let text = sessions_bench(&data, "sessionql,datafusion", &[]);
    assert!(!text.contains("failed"), "{text}");
    assert!(text.contains("agreement (sessions, total duration s, bounces):"));
    assert!(
        text.contains("the data files are read through before each process"),
        "{text}"
    );
    for query in 1..=7 {
        for engine in ["sessionql", "datafusion-sql"] {
            assert!(
                ran_query(&text, query, engine),
                "query {query} on {engine}: {text}"
            );
        }
    }
}

/// `--queries` picks queries of the suite by number; others are not run,
/// and a number outside the suite is refused by name.
#[test]
fn sessions_benchmark_runs_only_the_queries_asked_for() {
    let data = tempfile::tempdir().unwrap();
    let text = sessions_bench(&data, "sessionql", &["--queries", "2,6"]);
    let ran: Vec<usize> = (1..=7)
        .filter(|&query| ran_query(&text, query, "sessionql"))
        .collect();
    assert_eq!(ran, [2, 6], "{text}");

    let refused = run(&[
        "bench",
        "--queries",
        "9",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--queries"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn ingest_benchmark_runs_and_reports() {
    let data = tempfile::tempdir().unwrap();
    let output = run(&[
        "bench",
        "ingest",
        "--events",
        "5000",
        "--runs",
        "1",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.starts_with("ingest of 5000 generated PostHog events"),
        "{text}"
    );
    assert!(
        text.contains("events/s") && text.contains("peak memory"),
        "{text}"
    );
    assert!(text.contains("1 quarantined"), "{text}");
}
