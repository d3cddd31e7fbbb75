//! The Flight SQL door, end to end: the real `sessionql serve` on a free
//! loopback port, and arrow-flight's own Flight SQL client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
use arrow_flight::{FlightInfo, Ticket};
use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use futures::TryStreamExt;
use tonic::transport::Channel;

/// u1: pageviews at 00:00, 00:05 (one session of 300 s) and 00:45 (a second,
/// 0 s); u2: one given session of 20 s.
const EVENTS: &str = r#"{"uuid": "e1", "event": "$pageview", "distinct_id": "u1", "timestamp": "2024-01-01T00:00:00Z", "current_url": "https://a.com/home", "referring_domain": "$direct"}
{"uuid": "e2", "event": "$pageview", "distinct_id": "u1", "timestamp": "2024-01-01T00:05:00Z", "current_url": "https://a.com/pricing"}
{"uuid": "e3", "event": "$pageview", "distinct_id": "u1", "timestamp": "2024-01-01T00:45:00Z", "current_url": "https://a.com/blog"}
{"uuid": "e4", "event": "$pageview", "distinct_id": "u2", "timestamp": "2024-01-01T01:00:00Z", "session_id": "given-1", "current_url": "https://a.com/"}
{"uuid": "e5", "event": "$autocapture", "distinct_id": "u2", "timestamp": "2024-01-01T01:00:20Z", "session_id": "given-1"}
"#;

/// A running server, killed when dropped.
struct Server {
    child: Child,
    address: String,
    /// The server's stderr (its log), written to a file.
    log: std::path::PathBuf,
    _directory: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    start_server_with(&[])
}

fn start_server_with(extra_args: &[&str]) -> Server {
    let directory = tempfile::tempdir().unwrap();
    let events = directory.path().join("events.ndjson");
    std::fs::write(&events, EVENTS).unwrap();
    let users = directory.path().join("users");
    std::fs::write(&users, "# analysts\nalice:wonderland\n").unwrap();
    let extra_args: Vec<&str> = extra_args
        .iter()
        .map(|argument| {
            if *argument == "USERS_FILE" {
                users.to_str().unwrap()
            } else {
                argument
            }
        })
        .collect();
    let log = directory.path().join("server.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_sessionql"));
    command
        .args(["serve", "--port", "0", "--events", events.to_str().unwrap()])
        .args(&extra_args);
    let (child, address) = support::start_announcing(command, &log);
    Server {
        child,
        address,
        log,
        _directory: directory,
    }
}

async fn client(server: &Server) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

async fn fetch(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket: Ticket = endpoint.ticket.unwrap();
        let stream = client.do_get(ticket).await.unwrap();
        batches.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    batches
}

/// The non-null strings of one column of a batch.
fn strings(batch: &RecordBatch, column: usize) -> Vec<&str> {
    batch
        .column(column)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect()
}

async fn query_i64(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<i64> {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    fetch(client, info)
        .await
        .iter()
        .flat_map(|batch| {
            batch
                .column(0)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

#[tokio::test]
async fn statements_stream_results() {
    let server = start_server();
    let mut client = client(&server).await;
    let durations = query_i64(
        &mut client,
        "SELECT session_duration FROM sessions ORDER BY start_timestamp",
    )
    .await;
    assert_eq!(durations, vec![300, 0, 20]);
    let info = client
        .execute(
            "SELECT entry_pathname, channel_type FROM sessions ORDER BY start_timestamp".into(),
            None,
        )
        .await
        .unwrap();
    let schema = info.clone().try_decode_schema().unwrap();
    assert_eq!(schema.field(0).name(), "entry_pathname");
    let batches = fetch(&mut client, info).await;
    let paths: Vec<String> = batches
        .iter()
        .flat_map(|batch| {
            batch
                .column(0)
                .as_string::<i32>()
                .iter()
                .map(|value| value.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(paths, ["/home", "/blog", "/"]);
}

#[tokio::test]
async fn prepared_statements_bind_parameters_and_are_reusable() {
    let server = start_server();
    let mut client = client(&server).await;
    let mut statement = client
        .prepare(
            "SELECT count(*) AS n FROM sessions WHERE session_duration > $1".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(statement.dataset_schema().unwrap().field(0).name(), "n");
    let bind = |threshold: i64| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![threshold]))],
        )
        .unwrap()
    };
    // Durations are 300, 0 and 20.
    for (threshold, expected) in [(10, 2), (100, 1), (1000, 0)] {
        statement.set_parameters(bind(threshold)).unwrap();
        let info = statement.execute().await.unwrap();
        let batches = fetch(&mut client, info.clone()).await;
        assert_eq!(
            batches[0].column(0).as_primitive::<Int64Type>().value(0),
            expected,
            "threshold {threshold}"
        );
        // Executing the same ticket again gives the same answer.
        let again = fetch(&mut client, info).await;
        assert_eq!(
            again[0].column(0).as_primitive::<Int64Type>().value(0),
            expected
        );
    }
    statement.close().await.unwrap();
}

#[tokio::test]
async fn metadata_answers_without_a_catalog() {
    let server = start_server();
    let mut client = client(&server).await;

    let info = client.get_catalogs().await.unwrap();
    let catalogs = fetch(&mut client, info).await;
    assert_eq!(
        catalogs[0].column(0).as_string::<i32>().value(0),
        "datafusion"
    );

    let info = client
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    let schemas = fetch(&mut client, info).await;
    let names = strings(&schemas[0], 1);
    assert!(names.contains(&"public"), "{names:?}");

    let info = client
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: None,
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let tables = fetch(&mut client, info).await;
    let batch = &tables[0];
    let mut listed: Vec<(String, String)> = (0..batch.num_rows())
        .filter(|&row| batch.column(1).as_string::<i32>().value(row) == "public")
        .map(|row| {
            (
                batch.column(2).as_string::<i32>().value(row).to_string(),
                batch.column(3).as_string::<i32>().value(row).to_string(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("events".to_string(), "TABLE".to_string()),
            ("session_events".to_string(), "VIEW".to_string()),
            ("sessions".to_string(), "VIEW".to_string()),
        ]
    );
    assert!(
        batch.column(4).as_binary::<i32>().value(0).len() > 100,
        "schemas are included"
    );

    let info = client.get_table_types().await.unwrap();
    let types = fetch(&mut client, info).await;
    assert_eq!(types[0].num_rows(), 2);

    let info = client
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::SqlIdentifierQuoteChar,
        ])
        .await
        .unwrap();
    let infos = fetch(&mut client, info).await;
    assert_eq!(infos[0].num_rows(), 2);
}

#[tokio::test]
async fn errors_come_back_and_the_server_keeps_serving() {
    let server = start_server();
    let mut client = client(&server).await;
    let error = client
        .execute("SELEC 1".into(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("SELEC"), "{error}");
    let error = client
        .execute("SELECT * FROM no_such_table".into(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no_such_table"), "{error}");
    // A ticket that was not issued by this server is refused.
    let forged = Ticket {
        ticket: b"SELECT 'forged'".to_vec().into(),
    };
    assert!(client.do_get(forged).await.is_err());
    assert_eq!(
        query_i64(&mut client, "SELECT count(*) FROM sessions").await,
        vec![3]
    );
}

#[tokio::test]
async fn tables_a_client_creates_are_its_own() {
    let server = start_server();
    let mut first = client(&server).await;
    let mut second = client(&server).await;
    let info = first
        .execute("CREATE TABLE scratch AS VALUES (1), (2), (3)".into(), None)
        .await
        .unwrap();
    fetch(&mut first, info).await;
    assert_eq!(
        query_i64(&mut first, "SELECT count(*) FROM scratch").await,
        vec![3]
    );
    let error = second
        .execute("SELECT count(*) FROM scratch".into(), None)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("scratch"), "{error}");
}

#[tokio::test]
async fn settings_apply_to_one_client_only() {
    let server = start_server();
    let mut first = client(&server).await;
    let mut second = client(&server).await;
    let info = first
        .execute(
            "SET sessionql.session_idle_timeout_seconds = 3600".into(),
            None,
        )
        .await
        .unwrap();
    fetch(&mut first, info).await;
    // With a one-hour timeout u1's three pageviews are one session.
    assert_eq!(
        query_i64(&mut first, "SELECT count(*) FROM sessions").await,
        vec![2]
    );
    assert_eq!(
        query_i64(&mut second, "SELECT count(*) FROM sessions").await,
        vec![3]
    );
}

#[tokio::test]
async fn sixteen_clients_at_once() {
    let server = start_server();
    let mut tasks = Vec::new();
    for index in 0..16i64 {
        let mut client = client(&server).await;
        tasks.push(tokio::spawn(async move {
            let sql = format!("SELECT count(*) + {index} FROM sessions");
            query_i64(&mut client, &sql).await
        }));
    }
    for (index, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), vec![3 + index as i64]);
    }
}

#[tokio::test]
async fn authentication_when_enabled() {
    let server = start_server_with(&["--auth-token", "s3cret", "--users-file", "USERS_FILE"]);

    // No token: every call is refused.
    let mut anonymous = client(&server).await;
    let error = anonymous
        .execute("SELECT 1".into(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Unauthenticated") || error.contains("bearer token"),
        "{error}"
    );
    assert!(anonymous.get_catalogs().await.is_err());

    // A wrong password fails the handshake.
    assert!(anonymous.handshake("alice", "guess").await.is_err());

    // A user from the file exchanges a password for a token.
    let mut alice = client(&server).await;
    alice.handshake("alice", "wonderland").await.unwrap();
    assert_eq!(
        query_i64(&mut alice, "SELECT count(*) FROM sessions").await,
        vec![3]
    );

    // The shared token works directly as a bearer token.
    let mut service = client(&server).await;
    service.set_token("s3cret".into());
    assert_eq!(
        query_i64(&mut service, "SELECT count(*) FROM sessions").await,
        vec![3]
    );

    // A made-up token does not.
    let mut forger = client(&server).await;
    forger.set_token("00ff".into());
    assert!(forger.execute("SELECT 1".into(), None).await.is_err());
}

/// The calls the Arrow Flight SQL JDBC driver makes when a BI tool connects,
/// browses and runs a query (that driver cannot be installed here): every
/// query as a prepared statement executed twice, GetTables without a catalog
/// and with schemas, GetSqlInfo for every code, GetXdbcTypeInfo, and keys.
#[tokio::test]
async fn jdbc_driver_call_sequence() {
    use arrow_flight::sql::{CommandGetPrimaryKeys, CommandGetXdbcTypeInfo};

    let server = start_server();
    let mut client = client(&server).await;

    let info = client.get_sql_info(vec![]).await.unwrap();
    let infos = fetch(&mut client, info).await;
    assert!(
        infos[0].num_rows() >= 30,
        "all SqlInfo codes: {}",
        infos[0].num_rows()
    );

    let info = client
        .get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    let types = fetch(&mut client, info).await;
    let names = strings(&types[0], 0);
    assert!(
        names.contains(&"VARCHAR") && names.contains(&"TIMESTAMP"),
        "{names:?}"
    );

    let info = client
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: Some("%".into()),
            table_name_filter_pattern: Some("sess%".into()),
            table_types: vec!["VIEW".into()],
            include_schema: true,
        })
        .await
        .unwrap();
    let tables = fetch(&mut client, info).await;
    let names = strings(&tables[0], 2);
    assert_eq!(names, ["session_events", "sessions"]);

    let info = client
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: None,
            db_schema: None,
            table: "sessions".into(),
        })
        .await
        .unwrap();
    let keys = fetch(&mut client, info).await;
    assert_eq!(keys.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);

    let mut statement = client
        .prepare("SELECT count(*) AS sessions FROM sessions".into(), None)
        .await
        .unwrap();
    for _ in 0..2 {
        let info = statement.execute().await.unwrap();
        let batches = fetch(&mut client, info).await;
        assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 3);
    }
    statement.close().await.unwrap();
}

/// The error of a statement that plans but fails while its rows are fetched.
async fn execution_error(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> String {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let outcome = match client.do_get(ticket).await {
        Ok(stream) => stream
            .try_collect::<Vec<_>>()
            .await
            .map(|_| ())
            .map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    };
    outcome.expect_err("the statement fails")
}

#[tokio::test]
async fn a_query_over_its_memory_limit_fails_cleanly() {
    let server = start_server_with(&["--query-memory-limit-mb", "32"]);
    let mut client = client(&server).await;
    // 10 million values in one list (80 MB) cannot spill to disk.
    let heavy = "SELECT cardinality(array_agg(value)) FROM generate_series(1, 10000000)";
    let error = execution_error(&mut client, heavy).await;
    assert!(error.contains("Resources exhausted"), "{error}");
    // The pool shares the limit among spilling operators (DataFusion's
    // default for a limit is first come, first served: "greedy").
    assert!(error.contains("fair(pool_size: 32.0 MB)"), "{error}");
    // The server, and this client, go on.
    assert_eq!(
        query_i64(&mut client, "SELECT count(*) FROM sessions").await,
        vec![3]
    );

    // On a server without a per-query limit, a client's own limit, set
    // with SET, is shared fairly too.
    let unlimited = start_server();
    let mut other = self::client(&unlimited).await;
    let info = other
        .execute("SET datafusion.runtime.memory_limit = '16M'".into(), None)
        .await
        .unwrap();
    fetch(&mut other, info).await;
    let error = execution_error(&mut other, heavy).await;
    assert!(error.contains("fair(pool_size: 16.0 MB)"), "{error}");
}

/// A Python virtualenv with the ADBC Flight SQL driver and pyarrow.
fn python_with_adbc() -> std::path::PathBuf {
    support::python_venv(
        "adbc-venv",
        "adbc_driver_flightsql.dbapi, pyarrow",
        &["adbc-driver-flightsql", "pyarrow"],
    )
}

/// Runs the CLI on the sample and returns its CSV rows.
fn cli_rows(sql: &str) -> Vec<Vec<String>> {
    let output = Command::new(env!("CARGO_BIN_EXE_sessionql"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["query", "--format", "csv", sql])
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| line.split(',').map(str::to_string).collect())
        .collect()
}

#[tokio::test]
async fn python_adbc_client_sees_what_the_cli_sees() {
    let python = python_with_adbc();
    // The server on the shipped sample, like the CLI.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessionql"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["serve", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = support::announcement(&mut child);
    let address = support::announced_address(&line);
    let output = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/adbc_client.py"
        ))
        .arg(&address)
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    let channels = cli_rows(
        "SELECT channel_type, count(*) AS sessions FROM sessions GROUP BY 1 ORDER BY 2 DESC, 1",
    );
    let expected: Vec<serde_json::Value> = channels
        .iter()
        .map(|row| serde_json::json!([row[0], row[1].parse::<i64>().unwrap()]))
        .collect();
    assert_eq!(seen["channels"], serde_json::Value::Array(expected));

    let longer = cli_rows("SELECT count(*) FROM sessions WHERE session_duration > 10");
    assert_eq!(
        seen["longer_than_10s"],
        longer[0][0].parse::<i64>().unwrap()
    );

    assert_eq!(seen["tables"]["sessions"].as_array().unwrap().len(), 30);
    assert_eq!(seen["tables"]["events"].as_array().unwrap().len(), 20);
    assert_eq!(
        seen["tables"]["session_events"].as_array().unwrap().len(),
        20
    );
    assert_eq!(seen["tables"]["sessions"][0], "session_id");
}

#[tokio::test]
async fn tls_with_a_certificate_from_a_test_ca() {
    use tonic::transport::{Certificate, ClientTlsConfig};

    let directory = tempfile::tempdir().unwrap();
    let certificates = support::test_certificates(directory.path());
    let (ca, certificate, key) = (
        certificates.ca.to_str().unwrap().to_string(),
        certificates.certificate.to_str().unwrap().to_string(),
        certificates.key.to_str().unwrap().to_string(),
    );
    let server = start_server_with(&["--tls-cert", &certificate, "--tls-key", &key]);
    let port = server.address.rsplit(':').next().unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca).unwrap()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    assert_eq!(
        query_i64(&mut client, "SELECT count(*) FROM sessions").await,
        vec![3]
    );

    // A plain-text client cannot talk to it.
    let plain = Channel::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let mut plain = FlightSqlServiceClient::new(plain);
        assert!(plain.execute("SELECT 1".into(), None).await.is_err());
    }
}

#[tokio::test]
async fn a_client_that_drops_its_stream_cancels_the_query() {
    let server = start_server();
    let mut client = client(&server).await;
    // Long enough to still be running when the client gives up.
    let heavy = "SELECT count(*) FROM generate_series(1, 5000000000) WHERE value % 7 = 3";
    let info = client.execute(heavy.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let stream = client.do_get(ticket).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(stream);
    // The server logs the query as ended (0 rows) well before it could have finished.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        if log
            .lines()
            .any(|line| line.contains("rows=0") && line.contains("5000000000"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line for the cancelled query:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        query_i64(&mut client, "SELECT count(*) FROM sessions").await,
        vec![3]
    );
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains("client=127.0.0.1:") && log.contains("duration_ms="),
        "{log}"
    );
}
