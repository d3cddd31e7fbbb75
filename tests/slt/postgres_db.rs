//! sessionql over the Postgres wire protocol as a sqllogictest database: the
//! real `sessionql serve --pg-port` and `tokio-postgres` as the client. Values
//! arrive as PostgreSQL's text; they are written back the way DataFusion's
//! runner writes them (`true`, `2024-01-01T00:00:00Z`, `[a, b]`, `(empty)`),
//! so the same `.slt` files, with the same expected rows, check both doors.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime};
use datafusion_sqllogictest::DFColumnType;
use sqllogictest::DBOutput;
use tokio_postgres::types::{Kind, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A `sessionql serve --pg-port 0 --no-flight-sql` process, killed when dropped.
pub struct PgServer {
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PgServer {
    /// Starts the server in the repository (relative paths in `.slt` files
    /// resolve as in the in-process run).
    pub fn start() -> Result<PgServer, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sessionql"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "--pg-port", "0", "--no-flight-sql"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("cannot start sessionql serve: {error}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|error| error.to_string())?;
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| format!("unexpected first line: {line}"))?;
        Ok(PgServer { child, port })
    }
}

/// A client error with the server's message in full (`tokio_postgres::Error`
/// prints only "db error"), for `statement error <regex>` records.
#[derive(Debug)]
pub struct PgError(String);

impl std::fmt::Display for PgError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for PgError {}

impl From<tokio_postgres::Error> for PgError {
    fn from(error: tokio_postgres::Error) -> Self {
        match error.as_db_error() {
            Some(db) => PgError(format!(
                "{}: {} ({})",
                db.severity(),
                db.message(),
                db.code().code()
            )),
            None => PgError(error.to_string()),
        }
    }
}

/// One connection (one session) to the server.
pub struct PgDb {
    client: Client,
}

impl PgDb {
    /// Connects; the connection runs on the current tokio runtime.
    pub async fn connect(port: u16) -> Result<PgDb, PgError> {
        let (client, connection) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=postgres dbname=sessionql"),
            NoTls,
        )
        .await?;
        tokio::spawn(connection);
        Ok(PgDb { client })
    }
}

fn returns_rows(sql: &str) -> bool {
    let first = sql
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    matches!(
        first.as_str(),
        "select" | "with" | "values" | "explain" | "show"
    )
}

fn column_type(pg_type: &Type) -> DFColumnType {
    match *pg_type {
        Type::BOOL => DFColumnType::Boolean,
        Type::INT2 | Type::INT4 | Type::INT8 => DFColumnType::Integer,
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => DFColumnType::Float,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DFColumnType::Text,
        Type::DATE | Type::TIME => DFColumnType::DateTime,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => DFColumnType::Timestamp,
        _ => DFColumnType::Another,
    }
}

/// A PostgreSQL text value as DataFusion's runner prints it.
fn datafusion_text(value: Option<&str>, pg_type: &Type) -> String {
    let Some(value) = value else {
        return "NULL".into();
    };
    match *pg_type {
        Type::BOOL => match value {
            "t" => "true".into(),
            "f" => "false".into(),
            other => other.into(),
        },
        Type::TIMESTAMPTZ => DateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f%#z")
            .map(|time| time.to_utc().format("%Y-%m-%dT%H:%M:%S%.fZ").to_string())
            .unwrap_or_else(|_| value.into()),
        Type::FLOAT4 | Type::FLOAT8 => match value.parse::<f64>() {
            Ok(number) if number.is_finite() => {
                let rounded = (number * 1e12).round() / 1e12;
                format!("{rounded}")
            }
            _ => value.into(),
        },
        Type::NUMERIC if value.contains('.') => {
            let trimmed = value.trim_end_matches('0').trim_end_matches('.');
            trimmed.into()
        }
        Type::TIMESTAMP => NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f")
            .map(|time| time.format("%Y-%m-%dT%H:%M:%S%.f").to_string())
            .unwrap_or_else(|_| value.into()),
        _ if matches!(pg_type.kind(), Kind::Array(_)) => list_text(value),
        _ if value.is_empty() => "(empty)".into(),
        _ => value.into(),
    }
}

/// `{a,"b,c",NULL}` → `[a, b,c, NULL]`, as Arrow displays lists.
fn list_text(value: &str) -> String {
    let inner = value
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or(value);
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut characters = inner.chars();
    while let Some(character) = characters.next() {
        match character {
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            '\\' if quoted => current.extend(characters.next()),
            ',' if !quoted => {
                items.push(list_item(std::mem::take(&mut current), was_quoted));
                was_quoted = false;
            }
            other => current.push(other),
        }
    }
    if !inner.is_empty() {
        items.push(list_item(current, was_quoted));
    }
    format!("[{}]", items.join(", "))
}

fn list_item(text: String, quoted: bool) -> String {
    if !quoted && text == "NULL" {
        "NULL".into()
    } else {
        text
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for PgDb {
    type Error = PgError;
    type ColumnType = DFColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DFColumnType>, PgError> {
        if !returns_rows(sql) {
            self.client.simple_query(sql).await?;
            return Ok(DBOutput::StatementComplete(0));
        }
        let statement = self.client.prepare(sql).await?;
        let pg_types: Vec<Type> = statement
            .columns()
            .iter()
            .map(|column| column.type_().clone())
            .collect();
        let mut rows = Vec::new();
        for message in self.client.simple_query(sql).await? {
            if let SimpleQueryMessage::Row(row) = message {
                rows.push(
                    pg_types
                        .iter()
                        .enumerate()
                        .map(|(index, pg_type)| datafusion_text(row.get(index), pg_type))
                        .collect(),
                );
            }
        }
        // UInt64 and decimals both arrive as NUMERIC: a column of whole
        // numbers only is an integer column, as DataFusion types it.
        let types = pg_types
            .iter()
            .enumerate()
            .map(|(index, pg_type)| {
                let whole = rows
                    .iter()
                    .all(|row: &Vec<String>| row[index] == "NULL" || !row[index].contains('.'));
                if *pg_type == Type::NUMERIC && whole && !rows.is_empty() {
                    DFColumnType::Integer
                } else {
                    column_type(pg_type)
                }
            })
            .collect();
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "sessionql-postgres"
    }

    async fn sleep(duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}
