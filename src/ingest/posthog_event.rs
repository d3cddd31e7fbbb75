//! PostHog's event shape, mapped onto the `events` schema.
//!
//! A line of input is one of: an event object (as PostHog's exports and its
//! raw event stream carry them), a capture request body `{"batch": [...],
//! "sent_at": ...}` (also `data` instead of `batch`), or a raw capture record
//! whose `data` is the event as a JSON string. Request-level `sent_at`, `now`
//! and `_received_at` apply to every event of the request.

use serde_json::{Map, Value};
use sessionql_udfs::session_uuid::uuid_v7_from_key;

use crate::event_rows::{EventRow, PROPERTIES_INDEX, json_text, parse_timestamp_us};
use crate::events_schema::{OPTIONAL_STRING_COLUMNS, POSTHOG_PROPERTY_KEYS};
use crate::ingest::event_time::{EventTimeFields, event_time_us};

/// Request-level keys that each event of a batch inherits when it lacks them.
const INHERITED_KEYS: [&str; 3] = ["sent_at", "now", "_received_at"];

/// Top-level keys consumed by the mapping (or secrets never to be stored);
/// any other top-level key is kept inside `properties`.
const CONSUMED_KEYS: [&str; 11] = [
    "uuid",
    "event",
    "distinct_id",
    "timestamp",
    "properties",
    "sent_at",
    "now",
    "_received_at",
    "offset",
    "api_key",
    "token",
];

/// One event of a payload, or why that item of a batch is not an event.
pub type PayloadEvent = Result<Map<String, Value>, String>;

/// The events of one input line, each on its own so that one bad event of a
/// batch does not take the others with it; an error for the whole line when
/// it is not an object at all.
pub fn payload_events(payload: Value) -> Result<Vec<PayloadEvent>, String> {
    let Value::Object(mut body) = payload else {
        return Err("not a JSON object".into());
    };
    let items = match body.remove("batch") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err("'batch' must be an array of events".into()),
        None => match body.remove("data") {
            Some(Value::Array(items)) => items,
            Some(Value::String(text)) => return Ok(vec![raw_capture_record(&text, body)]),
            Some(other) => {
                // A plain event that happens to have a `data` key keeps it.
                body.insert("data".into(), other);
                return Ok(vec![Ok(body)]);
            }
            None => return Ok(vec![Ok(body)]),
        },
    };
    Ok(items
        .into_iter()
        .map(|item| match item {
            Value::Object(mut event) => {
                for key in INHERITED_KEYS {
                    if let (false, Some(value)) = (event.contains_key(key), body.get(key)) {
                        event.insert(key.into(), value.clone());
                    }
                }
                Ok(event)
            }
            _ => Err("batch item is not a JSON object".into()),
        })
        .collect())
}

/// A raw capture record: the event is the JSON text in `data`, the record
/// around it carries the receive time and the ids.
fn raw_capture_record(
    data: &str,
    record: Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let mut event = match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(event)) => event,
        Ok(_) => return Err("'data' is not a JSON object".into()),
        Err(error) => return Err(format!("'data' is not valid JSON ({error})")),
    };
    for (key, value) in record {
        if matches!(
            key.as_str(),
            "sent_at" | "now" | "_received_at" | "uuid" | "distinct_id"
        ) {
            event.entry(key).or_insert(value);
        }
    }
    Ok(event)
}

/// Maps one PostHog event onto an events row. `default_received_us` is the
/// receive time for events whose payload does not carry one.
pub fn event_row(
    mut event: Map<String, Value>,
    default_received_us: Option<i64>,
) -> Result<EventRow, String> {
    let name = required_text(&mut event, "event")?;
    let distinct_id = required_text(&mut event, "distinct_id")?;
    let mut properties = match event.remove("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(properties)) => properties,
        Some(other) => return Err(format!("'properties' must be a JSON object, got {other}")),
    };
    let received_at_us = match optional_time(&mut event, "now")? {
        Some(now) => Some(now),
        None => optional_time(&mut event, "_received_at")?.or(default_received_us),
    };
    // PostHog ignores a `sent_at` it cannot read rather than dropping the event.
    let sent_at_us = optional_time(&mut event, "sent_at").ok().flatten();
    let offset_ms = match event.remove("offset") {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) => number.as_f64().map(|offset| offset as i64),
        Some(other) => return Err(format!("'offset' must be milliseconds, got {other}")),
    };
    let timestamp_us = match event.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(_) => optional_time(&mut event, "timestamp")?,
    };
    let ignore_sent_at = properties
        .get("$ignore_sent_at")
        .is_some_and(|value| value.as_bool() == Some(true));
    let timestamp_us = event_time_us(EventTimeFields {
        timestamp_us,
        sent_at_us,
        offset_ms,
        received_at_us,
        ignore_sent_at,
    })?;
    let uuid = match event.remove("uuid") {
        Some(Value::String(uuid)) if !uuid.trim().is_empty() => uuid,
        None | Some(Value::Null) | Some(Value::String(_)) => {
            derived_event_uuid(&name, &distinct_id, timestamp_us, &properties)
        }
        Some(other) => return Err(format!("'uuid' must be a string, got {other}")),
    };
    for key in CONSUMED_KEYS {
        event.remove(key);
    }
    for (key, value) in event {
        properties.entry(key).or_insert(value);
    }
    let mut optional: [Option<String>; OPTIONAL_STRING_COLUMNS.len()] = Default::default();
    for (slot, key) in optional.iter_mut().zip(POSTHOG_PROPERTY_KEYS) {
        *slot = properties.get(key).cloned().and_then(json_text);
    }
    optional[PROPERTIES_INDEX] =
        (!properties.is_empty()).then(|| Value::Object(properties).to_string());
    Ok(EventRow {
        required: [uuid, name, distinct_id],
        timestamp_us,
        optional,
    })
}

/// A required identifying field: a non-empty string (a number for `distinct_id`).
fn required_text(event: &mut Map<String, Value>, key: &str) -> Result<String, String> {
    match event.remove(key) {
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(text),
        Some(Value::Number(number)) if key == "distinct_id" => Ok(number.to_string()),
        Some(Value::Null) | None => Err(format!("missing required field '{key}'")),
        Some(Value::String(_)) => Err(format!("field '{key}' is empty")),
        Some(other) => Err(format!("field '{key}' must be a string, got {other}")),
    }
}

/// A time field: an ISO 8601 string (its offset respected) or epoch milliseconds.
fn optional_time(event: &mut Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match event.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => parse_timestamp_us(&text)
            .map(Some)
            .map_err(|reason| format!("unparseable '{key}': {reason}")),
        Some(Value::Number(number)) => match number.as_f64() {
            Some(millis) if millis.is_finite() => Ok(Some((millis * 1000.0) as i64)),
            _ => Err(format!("unparseable '{key}': {number}")),
        },
        Some(other) => Err(format!("unparseable '{key}': {other}")),
    }
}

/// The id of an event that came without one: the same event content always
/// gets the same id, so re-ingesting it is recognised as a duplicate.
fn derived_event_uuid(
    name: &str,
    distinct_id: &str,
    timestamp_us: i64,
    properties: &Map<String, Value>,
) -> String {
    let properties = Value::Object(properties.clone()).to_string();
    let mut key = Vec::with_capacity(name.len() + distinct_id.len() + properties.len() + 2);
    for part in [name, distinct_id, &properties] {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    uuid_v7_from_key(timestamp_us, &key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn properties_fill_the_columns_and_stay_whole() {
        let row = event_row(
            object(json!({
                "uuid": "u1", "event": "$pageview", "distinct_id": "d1",
                "timestamp": "2024-01-01T00:00:00Z", "ip": "10.0.0.1",
                "api_key": "phc_secret",
                "properties": {"$session_id": "s1", "$current_url": "https://a.com/x",
                               "utm_source": "news", "gad_source": 1, "$browser": "Firefox"}
            })),
            None,
        )
        .unwrap();
        assert_eq!(row.required, ["u1", "$pageview", "d1"].map(String::from));
        assert_eq!(row.optional[0].as_deref(), Some("s1"));
        assert_eq!(row.optional[1].as_deref(), Some("https://a.com/x"));
        assert_eq!(row.optional[6].as_deref(), Some("news"));
        assert_eq!(row.optional[12].as_deref(), Some("1"));
        let properties: Value =
            serde_json::from_str(row.optional[PROPERTIES_INDEX].as_deref().unwrap()).unwrap();
        assert_eq!(properties["$browser"], "Firefox");
        assert_eq!(properties["ip"], "10.0.0.1");
        assert!(properties.get("api_key").is_none());
    }

    #[test]
    fn batch_items_inherit_the_request_times() {
        let events = payload_events(json!({
            "api_key": "k", "sent_at": "2024-01-01T00:00:10Z",
            "batch": [{"event": "a", "distinct_id": "d"}, 7]
        }))
        .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].as_ref().unwrap()["sent_at"],
            "2024-01-01T00:00:10Z"
        );
        assert!(events[1].is_err());
    }

    #[test]
    fn events_without_uuid_get_the_same_id_every_time() {
        let event = json!({"event": "a", "distinct_id": "d", "timestamp": "2024-01-01T00:00:00Z"});
        let first = event_row(object(event.clone()), None).unwrap();
        let second = event_row(object(event), None).unwrap();
        assert_eq!(first.required[0], second.required[0]);
        assert!(first.required[0].starts_with("018cc251-f400-7"));
    }
}
