//! The generator's NDJSON output: the same events as PostHog's SDKs would
//! send them, so that `sessionql ingest` can be exercised end to end.
//!
//! Each line is one event with the well-known columns back inside
//! `properties` under PostHog's names, the client's `timestamp` and
//! `sent_at`, and the server's receive time `now`. About one device in eight
//! has a wrong clock (minutes to hours, either way), some write local time
//! with a UTC offset, and server-side events (no `$session_id`) carry no
//! `sent_at`. A few lines are malformed on purpose. Undoing the skew as
//! PostHog does gives back exactly the times of the Parquet output.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Map, Value, json};
use sessionql_udfs::stable_hash::stable_hash64;

use crate::complete_files::{publish, temporary_path};
use crate::error::{Result, SessionqlError};
use crate::event_rows::{EventRow, PROPERTIES_INDEX};
use crate::events_schema::POSTHOG_PROPERTY_KEYS;

/// One line in this many is a malformed one (in addition to the events).
const MALFORMED_EVERY: u64 = 5_000;

/// The malformed lines, in turn: each is a kind of bad input ingest must
/// quarantine.
const MALFORMED_LINES: [&str; 5] = [
    r#"{"event": "$pageview", "distinct_id": "user-broken", "timestamp": "2024-01-01T00:0"#,
    r#"["not", "an", "event"]"#,
    r#"{"event": "$pageview", "timestamp": "2024-01-01T00:00:00Z", "properties": {}}"#,
    r#"{"event": "$pageview", "distinct_id": "user-broken", "timestamp": "the day after tomorrow"}"#,
    r#"{"distinct_id": "user-broken", "timestamp": "2024-01-01T00:00:00Z"}"#,
];

/// How a device's clock is off, fixed for each `distinct_id`.
struct DeviceClock {
    skew_us: i64,
    utc_offset_seconds: i32,
}

fn device_clock(distinct_id: &str) -> DeviceClock {
    let hash = stable_hash64(7, distinct_id.as_bytes());
    let skew_us = if hash.is_multiple_of(8) {
        // 1 minute to about 3 hours, ahead or behind.
        let magnitude = 60_000_000 + ((hash >> 8) % 10_800_000) as i64 * 1_000;
        if (hash >> 40).is_multiple_of(2) {
            magnitude
        } else {
            -magnitude
        }
    } else {
        0
    };
    let utc_offset_seconds = match (hash >> 48) % 6 {
        0 => 2 * 3_600,
        1 => -5 * 3_600,
        2 => 5 * 3_600 + 1_800,
        _ => 0,
    };
    DeviceClock {
        skew_us,
        utc_offset_seconds,
    }
}

/// A time as the client writes it: its local offset, microseconds.
fn client_time(unix_us: i64, utc_offset_seconds: i32) -> String {
    let time = DateTime::from_timestamp_micros(unix_us).unwrap_or_default();
    match FixedOffset::east_opt(utc_offset_seconds) {
        Some(offset) if utc_offset_seconds != 0 => time
            .with_timezone(&offset)
            .format("%Y-%m-%dT%H:%M:%S%.6f%:z")
            .to_string(),
        _ => server_time(time),
    }
}

fn server_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// One event in PostHog's shape, as received at `arrival_us`.
pub fn posthog_event_json(row: &EventRow, arrival_us: i64) -> Value {
    let mut properties: Map<String, Value> = row.optional[PROPERTIES_INDEX]
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    for (key, value) in POSTHOG_PROPERTY_KEYS.iter().zip(&row.optional) {
        if let Some(value) = value {
            properties.insert((*key).to_string(), json!(value));
        }
    }
    let client_side = row.optional[0].is_some();
    let clock = if client_side {
        device_clock(&row.required[2])
    } else {
        DeviceClock {
            skew_us: 0,
            utc_offset_seconds: 0,
        }
    };
    let mut event = Map::new();
    event.insert("uuid".into(), json!(row.required[0]));
    event.insert("event".into(), json!(row.required[1]));
    event.insert("distinct_id".into(), json!(row.required[2]));
    event.insert(
        "timestamp".into(),
        json!(client_time(
            row.timestamp_us + clock.skew_us,
            clock.utc_offset_seconds
        )),
    );
    if client_side {
        event.insert(
            "sent_at".into(),
            json!(client_time(
                arrival_us + clock.skew_us,
                clock.utc_offset_seconds
            )),
        );
    }
    event.insert(
        "now".into(),
        json!(server_time(
            DateTime::from_timestamp_micros(arrival_us).unwrap_or_default()
        )),
    );
    event.insert("properties".into(), Value::Object(properties));
    Value::Object(event)
}

/// Writes events as PostHog NDJSON to numbered files of at most
/// `rows_per_file` events, each renamed into place when complete.
pub struct NdjsonFiles {
    directory: PathBuf,
    rows_per_file: usize,
    current: Option<(BufWriter<File>, PathBuf, PathBuf, usize)>,
    lines: u64,
    written: Vec<PathBuf>,
}

impl NdjsonFiles {
    /// Files of at most `rows_per_file` events in `directory`.
    pub fn new(directory: &Path, rows_per_file: usize) -> Self {
        Self {
            directory: directory.to_path_buf(),
            rows_per_file: rows_per_file.max(1),
            current: None,
            lines: 0,
            written: Vec::new(),
        }
    }

    /// Adds one event received at `arrival_us`; now and then a malformed line too.
    pub fn push(&mut self, row: &EventRow, arrival_us: i64) -> Result<()> {
        self.lines += 1;
        let line = posthog_event_json(row, arrival_us).to_string();
        self.write_line(&line)?;
        if let Some((_, _, _, events)) = &mut self.current {
            *events += 1;
        }
        if self.lines % MALFORMED_EVERY == MALFORMED_EVERY / 2 {
            let kind = (self.lines / MALFORMED_EVERY) as usize % MALFORMED_LINES.len();
            self.write_line(MALFORMED_LINES[kind])?;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|(_, _, _, rows)| *rows >= self.rows_per_file)
        {
            self.finish_file()?;
        }
        Ok(())
    }

    fn write_line(&mut self, line: &str) -> Result<()> {
        if self.current.is_none() {
            let name = format!("events-{:04}.ndjson", self.written.len());
            let final_path = self.directory.join(&name);
            let temporary_path = temporary_path(&self.directory, &name);
            let file = File::create(&temporary_path).map_err(|source| SessionqlError::Write {
                path: temporary_path.clone(),
                source,
            })?;
            self.current = Some((BufWriter::new(file), temporary_path, final_path, 0));
        }
        if let Some((writer, temporary_path, _, _)) = &mut self.current {
            writeln!(writer, "{line}").map_err(|source| SessionqlError::Write {
                path: temporary_path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn finish_file(&mut self) -> Result<()> {
        if let Some((writer, temporary_path, final_path, _)) = self.current.take() {
            let write_error = |source| SessionqlError::Write {
                path: temporary_path.clone(),
                source,
            };
            writer
                .into_inner()
                .map_err(|error| write_error(error.into_error()))?
                .sync_all()
                .map_err(write_error)?;
            publish(&temporary_path, &final_path)?;
            self.written.push(final_path);
        }
        Ok(())
    }

    /// Finishes the last file; returns every file written.
    pub fn close(mut self) -> Result<Vec<PathBuf>> {
        self.finish_file()?;
        Ok(self.written)
    }
}
