//! The Postgres wire protocol door, end to end: the real `sessionql serve
//! --pg-port` on a free loopback port, the real `psql` (Debian's
//! postgresql-client, installed when missing) and Python's psycopg (pip, in a
//! virtualenv in the build directory).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

mod support;

use std::process::{Child, Command, Output, Stdio};

/// u1: two derived sessions (e1–e2, 300 s; e3 alone); u2: one given session
/// (e4–e5, 20 s, with an autocapture).
const EVENTS: &str = r#"{"uuid": "e1", "event": "$pageview", "distinct_id": "u1", "timestamp": "2024-01-01T00:00:00Z", "current_url": "https://a.com/home", "referring_domain": "$direct"}
{"uuid": "e2", "event": "$pageview", "distinct_id": "u1", "timestamp": "2024-01-01T00:05:00Z", "current_url": "https://a.com/pricing"}
{"uuid": "e3", "event": "$pageview", "distinct_id": "u1", "timestamp": "2024-01-01T00:45:00Z", "current_url": "https://a.com/blog", "referring_domain": "www.google.com"}
{"uuid": "e4", "event": "$pageview", "distinct_id": "u2", "timestamp": "2024-01-01T01:00:00Z", "session_id": "given-1", "current_url": "https://a.com/"}
{"uuid": "e5", "event": "$autocapture", "distinct_id": "u2", "timestamp": "2024-01-01T01:00:20Z", "session_id": "given-1"}
"#;

/// A running server, killed when dropped.
struct Server {
    child: Child,
    port: String,
    directory: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn events(&self) -> std::path::PathBuf {
        self.directory.path().join("events.ndjson")
    }
}

/// `serve --pg-port 0` on the hand-made events; `extra_args` may name the
/// users file as `USERS_FILE` (alice:wonderland).
fn start_server(extra_args: &[&str]) -> Server {
    let directory = tempfile::tempdir().unwrap();
    let events = directory.path().join("events.ndjson");
    std::fs::write(&events, EVENTS).unwrap();
    let users = directory.path().join("users");
    std::fs::write(&users, "alice:wonderland\n").unwrap();
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessionql"))
        .args(["serve", "--port", "0", "--pg-port", "0", "--events"])
        .arg(&events)
        .args(&extra_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = support::announcement(&mut child);
    assert!(
        line.starts_with("sessionql Postgres server listening on 127.0.0.1:"),
        "{line}"
    );
    let port = line.rsplit(':').next().unwrap().to_string();
    Server {
        child,
        port,
        directory,
    }
}

/// Runs `psql` against the server with `args` (after the connection options).
fn psql(server: &Server, user: &str, password: Option<&str>, args: &[&str]) -> Output {
    support::ensure_debian_package(&["psql", "--version"], &["postgresql-client"]);
    let mut command = Command::new("psql");
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port,
            "-U",
            user,
            "-d",
            "sessionql",
        ])
        .args(["-X", "--no-password", "-v", "VERBOSITY=verbose"])
        .args(args)
        .env_remove("PGPASSWORD");
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn psql_lists_the_tables_and_describes_sessions() {
    let server = start_server(&[]);
    let tables = psql(&server, "postgres", None, &["-c", "\\dt"]);
    assert!(tables.status.success(), "{}", text(&tables.stderr));
    assert!(text(&tables.stdout).contains("public | events | table"));
    let views = psql(&server, "postgres", None, &["-c", "\\dv"]);
    let views = text(&views.stdout);
    assert!(views.contains("public | session_events | view"), "{views}");
    assert!(views.contains("public | sessions       | view"), "{views}");

    let described = psql(&server, "postgres", None, &["-c", "\\d sessions"]);
    let described = text(&described.stdout);
    // Each type as Postgres names it, so tools format the values.
    for (column, pg_type) in [
        ("session_id", "text"),
        ("start_timestamp", "timestamp with time zone"),
        ("session_duration", "bigint"),
        ("urls", "text[]"),
        ("is_bounce", "boolean"),
        ("channel_type", "text"),
    ] {
        assert!(
            described
                .lines()
                .any(|line| line.split('|').next().unwrap().trim() == column
                    && line.split('|').nth(1).unwrap().trim() == pg_type),
            "{column} {pg_type}: {described}"
        );
    }
}

#[test]
fn psql_results_match_the_cli() {
    let server = start_server(&[]);
    let sql = "SELECT session_id, distinct_id, session_duration, channel_type, is_bounce \
               FROM sessions ORDER BY start_timestamp";
    let output = psql(
        &server,
        "postgres",
        None,
        &["-A", "-t", "-F", ",", "-c", sql],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let cli = Command::new(env!("CARGO_BIN_EXE_sessionql"))
        .args(["query", "--format", "csv", "--events"])
        .arg(server.events())
        .arg(sql)
        .output()
        .unwrap();
    assert!(cli.status.success());
    // Booleans print as t/f in psql, true/false in the CLI.
    let cli_rows: Vec<String> = text(&cli.stdout)
        .lines()
        .skip(1)
        .map(|line| line.replace(",true", ",t").replace(",false", ",f"))
        .collect();
    let psql_rows: Vec<String> = text(&output.stdout).lines().map(str::to_string).collect();
    assert_eq!(psql_rows, cli_rows);
    assert_eq!(psql_rows.len(), 3);
    assert!(psql_rows[2].starts_with("given-1,u2,20,"), "{psql_rows:?}");
}

#[test]
fn an_error_leaves_the_connection_usable() {
    let server = start_server(&[]);
    // psql runs every -c on one connection; an error does not stop it.
    let output = psql(
        &server,
        "postgres",
        None,
        &[
            "-A",
            "-t",
            "-c",
            "SET application_name = 'metabase'",
            "-c",
            "SET extra_float_digits = 3",
            "-c",
            "SELECT no_such_column FROM sessions",
            "-c",
            "SELECT count(*) FROM sessions",
            "-c",
            "SELECT version()",
            "-c",
            "SELECT current_schema()",
            "-c",
            "SHOW search_path",
        ],
    );
    let stderr = text(&output.stderr);
    let stdout = text(&output.stdout);
    assert!(stderr.contains("ERROR:"), "{stderr}");
    assert!(stderr.contains("no_such_column"), "{stderr}");
    // VERBOSITY=verbose prints the SQLSTATE after ERROR:.
    let code = stderr.split("ERROR:").nth(1).unwrap().trim_start();
    assert!(
        code.len() > 5 && code[..5].chars().all(|c| c.is_ascii_alphanumeric()),
        "{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"3"), "{stdout}");
    assert!(stdout.contains("DataFusion"), "{stdout}");
    // current_schema() and SHOW search_path.
    assert_eq!(
        lines.iter().filter(|line| **line == "public").count(),
        2,
        "{stdout}"
    );
}

#[test]
fn settings_apply_to_the_connection_and_bad_values_are_errors() {
    let server = start_server(&[]);
    let output = psql(
        &server,
        "postgres",
        None,
        &[
            "-A",
            "-t",
            "-c",
            "SET sessionql.session_idle_timeout_seconds = 3600",
            "-c",
            "SELECT count(*) FROM sessions",
            "-c",
            "SET sessionql.bounce_duration_seconds = 'soon'",
            "-c",
            "SET sessionql.channel_definitions = '/no/such/file.json'",
        ],
    );
    // With a one-hour idle timeout u1's three pageviews are one session.
    let lines: Vec<String> = text(&output.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines, ["SET", "2"], "{}", text(&output.stderr));
    let errors = text(&output.stderr);
    assert_eq!(errors.matches("ERROR:  22023:").count(), 2, "{errors}");
    assert!(errors.contains("bounce_duration_seconds"), "{errors}");
    assert!(errors.contains("/no/such/file.json"), "{errors}");
    // Another connection still has the defaults.
    let other = psql(
        &server,
        "postgres",
        None,
        &["-A", "-t", "-c", "SELECT count(*) FROM sessions"],
    );
    assert_eq!(text(&other.stdout).trim(), "3");

    // A connection's memory limit is shared fairly among spilling operators
    // (DataFusion's own pool for this setting is first come, first served).
    let limited = psql(
        &server,
        "postgres",
        None,
        &[
            "-A",
            "-t",
            "-c",
            "SET DataFusion.Runtime.Memory_Limit = '16M'",
            "-c",
            "SELECT cardinality(array_agg(value)) FROM generate_series(1, 10000000)",
            // The connection still answers. (Not a query that needs the
            // pool: the failed query's tasks release their reservations
            // when they are cancelled, which on a loaded machine can come
            // after the next query has started.)
            "-c",
            "SELECT 1 + 2",
        ],
    );
    let errors = text(&limited.stderr);
    assert!(errors.contains("fair(pool_size: 16.0 MB)"), "{errors}");
    assert!(
        text(&limited.stdout).ends_with("3\n"),
        "{}\n{errors}",
        text(&limited.stdout)
    );
}

#[test]
fn a_connection_can_bring_its_own_events() {
    let server = start_server(&[]);
    let output = psql(
        &server,
        "postgres",
        None,
        &[
            "-A",
            "-t",
            "-c",
            "CREATE TABLE events (uuid VARCHAR NOT NULL, event VARCHAR NOT NULL, \
             distinct_id VARCHAR NOT NULL, timestamp TIMESTAMP NOT NULL) AS VALUES \
             ('x1', '$pageview', 'x', '2024-02-01T00:00:00'), \
             ('x2', '$pageview', 'x', '2024-02-01T02:00:00')",
            "-c",
            "SELECT count(*) FROM sessions",
            "-c",
            "SELECT count(*) FROM events",
        ],
    );
    // Two pageviews two hours apart: two sessions over the connection's events.
    let lines: Vec<String> = text(&output.stdout).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        ["CREATE TABLE", "2", "2"],
        "{}",
        text(&output.stderr)
    );
    // Other connections still see the served events.
    let other = psql(
        &server,
        "postgres",
        None,
        &["-A", "-t", "-c", "SELECT count(*) FROM events"],
    );
    assert_eq!(text(&other.stdout).trim(), "5");
}

#[test]
fn passwords_are_checked_with_scram_and_cleartext() {
    for method in ["scram", "cleartext"] {
        let server = start_server(&["--users-file", "USERS_FILE", "--pg-password-method", method]);
        let good = psql(
            &server,
            "alice",
            Some("wonderland"),
            &["-A", "-t", "-c", "SELECT count(*) FROM sessions"],
        );
        assert!(good.status.success(), "{method}: {}", text(&good.stderr));
        assert_eq!(text(&good.stdout).trim(), "3");
        let wrong = psql(&server, "alice", Some("looking-glass"), &["-c", "SELECT 1"]);
        assert!(!wrong.status.success());
        assert!(
            text(&wrong.stderr)
                .to_lowercase()
                .contains("password authentication failed"),
            "{method}: {}",
            text(&wrong.stderr)
        );
        let unknown = psql(&server, "mallory", Some("wonderland"), &["-c", "SELECT 1"]);
        assert!(!unknown.status.success());
        let without = psql(&server, "alice", None, &["-c", "SELECT 1"]);
        assert!(!without.status.success());
    }
}

/// psycopg 3 binds parameters on the server (extended protocol).
#[test]
fn psycopg_binds_parameters_on_the_server() {
    let server = start_server(&[]);
    let python = support::python_venv("psycopg-venv", "psycopg", &["psycopg[binary]"]);
    let script = r#"
import sys, psycopg
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="postgres", dbname="sessionql") as connection:
    cursor = connection.cursor()
    cursor.execute("SELECT count(*) FROM sessions WHERE session_duration > %s", (10,))
    print(cursor.fetchone()[0])
    cursor.execute("SELECT session_id, urls, is_bounce, start_timestamp FROM sessions WHERE distinct_id = %s ORDER BY start_timestamp", ("u1",), prepare=True)
    for row in cursor.fetchall():
        print(row[0][:0] + "row", row[1], row[2], row[3].isoformat())
    try:
        cursor.execute("SELECT nothing FROM sessions WHERE session_duration > %s", (1,))
    except psycopg.Error as error:
        print("error", error.sqlstate is not None)
    connection.rollback()
    cursor.execute("SELECT count(*) FROM sessions WHERE channel_type = %s", ("Direct",))
    print(cursor.fetchone()[0])
"#;
    let output = Command::new(python)
        .args(["-c", script, &server.port])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "2",
            "row ['https://a.com/home', 'https://a.com/pricing'] False 2024-01-01T00:00:00+00:00",
            "row ['https://a.com/blog'] True 2024-01-01T00:45:00+00:00",
            "error True",
            "1",
        ],
        "{stdout}"
    );
}

#[test]
fn tls_with_a_certificate_from_a_test_ca() {
    let directory = tempfile::tempdir().unwrap();
    let certificates = support::test_certificates(directory.path());
    let server = start_server(&[
        "--tls-cert",
        certificates.certificate.to_str().unwrap(),
        "--tls-key",
        certificates.key.to_str().unwrap(),
    ]);
    let connection = format!(
        "host=localhost port={} user=postgres dbname=sessionql sslmode=verify-full sslrootcert={}",
        server.port,
        certificates.ca.display()
    );
    let output = Command::new("psql")
        .args([
            &connection,
            "-X",
            "-A",
            "-t",
            "-c",
            "\\conninfo",
            "-c",
            "SELECT count(*) FROM sessions",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("SSL connection"), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("3"), "{stdout}");
}
