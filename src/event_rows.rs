//! Row-wise event input (NDJSON and CSV): each line is checked on its own, so
//! one malformed line is reported with its file and line number and every
//! other line still loads. Rows become Arrow batches of the events schema.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use datafusion::arrow::array::{ArrayRef, StringBuilder, TimestampMicrosecondArray};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

use crate::events_schema::{OPTIONAL_STRING_COLUMNS, REQUIRED_COLUMNS, stored_events_schema};

/// One event, checked and ready for the events schema.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// `uuid`, `event`, `distinct_id`, in that order.
    pub required: [String; 3],
    /// `timestamp` in microseconds since the epoch, UTC.
    pub timestamp_us: i64,
    /// The optional columns, in [`OPTIONAL_STRING_COLUMNS`] order.
    pub optional: [Option<String>; OPTIONAL_STRING_COLUMNS.len()],
}

/// Where `properties` sits among the optional columns.
pub const PROPERTIES_INDEX: usize = OPTIONAL_STRING_COLUMNS.len() - 1;

/// Parses an event time: RFC 3339 / ISO 8601 with an offset, or without one
/// (read as UTC), with `T` or a space between date and time.
pub fn parse_timestamp_us(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Some(micros) = utc_timestamp_us(text) {
        return Ok(micros);
    }
    if let Ok(parsed) = DateTime::parse_from_rfc3339(text) {
        return Ok(parsed.timestamp_micros());
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
    ] {
        if let Ok(parsed) = DateTime::parse_from_str(text, format) {
            return Ok(parsed.timestamp_micros());
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(parsed) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(parsed.and_utc().timestamp_micros());
        }
    }
    Err(format!(
        "timestamp '{text}' is not an ISO 8601 date and time"
    ))
}

/// The shape nearly every event time comes in, `YYYY-MM-DDTHH:MM:SS[.f]Z`
/// (what PostHog's SDKs and exports write), read without chrono's general
/// parser, which took 4% of all of ingest's instructions; `None` for anything
/// else, which the general parser then reads. Dates and times are still
/// checked by chrono (month lengths, leap years); leap seconds go the
/// general way.
fn utc_timestamp_us(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        bytes.get(range)?.iter().try_fold(0u32, |value, byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + u32::from(byte - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if bytes.len() < 20
        || bytes[bytes.len() - 1] != b'Z'
        || separators.iter().any(|(at, byte)| bytes[*at] != *byte)
    {
        return None;
    }
    let fraction = &bytes[19..bytes.len() - 1];
    let nanos = match fraction {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            let value = number(20..20 + digits.len())?;
            value * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let second = number(17..19)?;
    if second > 59 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)?;
    let time = date.and_hms_nano_opt(number(11..13)?, number(14..16)?, second, nanos)?;
    Some(time.and_utc().timestamp_micros())
}

/// A JSON value as the text of a string column: strings as they are, numbers
/// and booleans as written, objects and arrays as JSON, null as missing.
fn json_text(value: Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text),
        other => Some(other.to_string()),
    }
}

/// Checks one JSON event object; the error names what is wrong with it.
/// Keys that are not columns are kept inside `properties`, so nothing is lost.
pub fn event_from_json(mut object: Map<String, Value>) -> Result<EventRow, String> {
    let mut required: [String; 3] = Default::default();
    for (slot, column) in required.iter_mut().zip(REQUIRED_COLUMNS) {
        *slot = match object.remove(column) {
            Some(Value::String(text)) if !text.is_empty() => text,
            Some(Value::Number(number)) if column == "distinct_id" => number.to_string(),
            Some(Value::Null) | None => return Err(format!("missing required field '{column}'")),
            Some(other) => {
                return Err(format!(
                    "field '{column}' must be a non-empty string, got {other}"
                ));
            }
        };
    }
    let timestamp_us = match object.remove("timestamp") {
        Some(Value::String(text)) => parse_timestamp_us(&text)?,
        Some(Value::Null) | None => return Err("missing required field 'timestamp'".into()),
        Some(other) => {
            return Err(format!(
                "field 'timestamp' must be an ISO 8601 string, got {other}"
            ));
        }
    };
    let mut optional: [Option<String>; OPTIONAL_STRING_COLUMNS.len()] = Default::default();
    let properties = object.remove("properties");
    for (slot, column) in optional.iter_mut().zip(OPTIONAL_STRING_COLUMNS) {
        if let Some(value) = object.remove(column) {
            *slot = json_text(value);
        }
    }
    optional[PROPERTIES_INDEX] = merge_properties(properties, object)?;
    Ok(EventRow {
        required,
        timestamp_us,
        optional,
    })
}

/// `properties` as JSON text, with any leftover top-level keys added to it.
fn merge_properties(
    properties: Option<Value>,
    extra: Map<String, Value>,
) -> Result<Option<String>, String> {
    let mut merged = match properties {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(Value::String(text)) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => map,
            _ if extra.is_empty() => return Ok(Some(text)),
            _ => return Err("field 'properties' must be a JSON object".into()),
        },
        Some(other) => {
            return Err(format!(
                "field 'properties' must be a JSON object, got {other}"
            ));
        }
    };
    for (key, value) in extra {
        merged.entry(key).or_insert(value);
    }
    Ok((!merged.is_empty()).then(|| Value::Object(merged).to_string()))
}

/// Checks one CSV record by header name; empty fields read as missing.
pub fn event_from_csv(header: &[String], record: &csv::StringRecord) -> Result<EventRow, String> {
    let mut object = Map::new();
    for (name, field) in header.iter().zip(record.iter()) {
        if !field.is_empty() {
            object.insert(name.clone(), Value::String(field.to_string()));
        }
    }
    event_from_json(object)
}

/// Collects checked rows into Arrow batches of the events schema. Rows go
/// straight into Arrow builders, so a waiting row costs its bytes, not a
/// struct of strings.
#[derive(Debug)]
pub struct EventBatchBuilder {
    required: [StringBuilder; 3],
    timestamps: Vec<i64>,
    optional: Vec<StringBuilder>,
}

impl Default for EventBatchBuilder {
    fn default() -> Self {
        Self {
            required: Default::default(),
            timestamps: Vec::new(),
            optional: OPTIONAL_STRING_COLUMNS
                .iter()
                .map(|_| StringBuilder::new())
                .collect(),
        }
    }
}

impl EventBatchBuilder {
    /// A builder with room for `rows` rows and about `text_bytes` bytes of
    /// column text, so filling it does not grow (and copy) its buffers.
    pub fn with_capacity(rows: usize, text_bytes: usize) -> Self {
        let string_column = |bytes: usize| StringBuilder::with_capacity(rows, bytes);
        Self {
            required: [
                string_column(rows * 36),
                string_column(rows * 16),
                string_column(rows * 24),
            ],
            timestamps: Vec::with_capacity(rows),
            optional: OPTIONAL_STRING_COLUMNS
                .iter()
                .map(|column| {
                    if *column == "properties" {
                        string_column(text_bytes)
                    } else {
                        string_column(rows * 16)
                    }
                })
                .collect(),
        }
    }

    /// Adds one row.
    pub fn push(&mut self, row: EventRow) {
        for (builder, value) in self.required.iter_mut().zip(&row.required) {
            builder.append_value(value);
        }
        self.timestamps.push(row.timestamp_us);
        for (builder, value) in self.optional.iter_mut().zip(&row.optional) {
            builder.append_option(value.as_deref());
        }
    }

    /// Rows added since the last [`Self::finish`].
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    /// True when no rows are waiting.
    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    /// The waiting rows as one batch; the builder is empty afterwards.
    pub fn finish(&mut self) -> datafusion::error::Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(4 + self.optional.len());
        columns.extend(
            self.required
                .iter_mut()
                .map(|builder| Arc::new(builder.finish()) as ArrayRef),
        );
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(std::mem::take(&mut self.timestamps))
                .with_timezone("UTC"),
        ));
        columns.extend(
            self.optional
                .iter_mut()
                .map(|builder| Arc::new(builder.finish()) as ArrayRef),
        );
        Ok(RecordBatch::try_new(stored_events_schema(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast reader of `…Z` times agrees with chrono's RFC 3339 parser on
    /// every text it accepts, and accepts the common shapes.
    #[test]
    fn utc_times_read_fast_agree_with_chrono() {
        let seeds = [
            "2024-02-29T23:59:59.123456789Z",
            "2023-02-28T00:00:00Z",
            "1969-12-31T23:59:59.5Z",
            "2024-01-01T00:02:09.942386Z",
        ];
        for seed in seeds {
            assert_eq!(
                utc_timestamp_us(seed),
                Some(
                    DateTime::parse_from_rfc3339(seed)
                        .unwrap()
                        .timestamp_micros()
                ),
                "{seed}"
            );
        }
        let replacements = b"0123456789-:.TZz +";
        let mut state = 0x1234_5678_9abc_def1u64;
        for round in 0..50_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
            let at = (state % bytes.len() as u64) as usize;
            let byte = replacements[((state >> 20) % replacements.len() as u64) as usize];
            match (state >> 40) % 3 {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => {
                    bytes.remove(at);
                }
            }
            let text = String::from_utf8(bytes).unwrap();
            if let Some(micros) = utc_timestamp_us(&text) {
                let chrono =
                    DateTime::parse_from_rfc3339(&text).map(|time| time.timestamp_micros());
                assert_eq!(Ok(micros), chrono, "{text}");
            }
        }
        for other in [
            "2024-02-30T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2016-12-31T23:59:60Z",
            "2024-01-01T00:00:00+01:00",
            "2024-01-01T00:00:00.Z",
        ] {
            assert_eq!(utc_timestamp_us(other), None, "{other}");
        }
    }

    #[test]
    fn timestamps_with_and_without_offsets() {
        assert_eq!(parse_timestamp_us("1970-01-01T00:00:01Z"), Ok(1_000_000));
        assert_eq!(
            parse_timestamp_us("1970-01-01T01:00:01+01:00"),
            Ok(1_000_000)
        );
        assert_eq!(parse_timestamp_us("1970-01-01 00:00:01.5"), Ok(1_500_000));
        assert!(parse_timestamp_us("yesterday").is_err());
    }

    #[test]
    fn extra_keys_go_to_properties() {
        let object = serde_json::json!({
            "uuid": "u1", "event": "$pageview", "distinct_id": 7,
            "timestamp": "2024-01-01T00:00:00Z", "properties": {"$browser": "Firefox"},
            "plan": "pro", "gad_source": 1
        });
        let Value::Object(object) = object else {
            unreachable!()
        };
        let row = event_from_json(object).unwrap();
        assert_eq!(row.required[2], "7");
        assert_eq!(row.optional[12].as_deref(), Some("1"));
        let properties: Value =
            serde_json::from_str(row.optional[PROPERTIES_INDEX].as_deref().unwrap()).unwrap();
        assert_eq!(properties["plan"], "pro");
        assert_eq!(properties["$browser"], "Firefox");
    }

    #[test]
    fn missing_required_field_is_named() {
        let Value::Object(object) = serde_json::json!({"uuid": "u1", "event": "e"}) else {
            unreachable!()
        };
        assert_eq!(
            event_from_json(object),
            Err("missing required field 'distinct_id'".into())
        );
    }
}
