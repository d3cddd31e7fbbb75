//! PostHog's event shape, mapped onto the `events` schema.
//!
//! A line of input is one of: an event object (as PostHog's exports and its
//! raw event stream carry them), a capture request body `{"batch": [...],
//! "sent_at": ...}` (also `data` instead of `batch`), or a raw capture record
//! whose `data` is the event as a JSON string. Request-level `sent_at`, `now`
//! and `_received_at` apply to every event of the request.
//!
//! The line is read as slices of its text ([`crate::ingest::json_spans`]):
//! only the fields that become columns are parsed, and `properties` is stored
//! as the text it came as.

use sessionql_udfs::session_uuid::uuid_v7_from_key;

use crate::event_rows::{EventRow, PROPERTIES_INDEX, parse_timestamp_us};
use crate::events_schema::{OPTIONAL_STRING_COLUMNS, POSTHOG_PROPERTY_KEYS};
use crate::ingest::event_time::{EventTimeFields, event_time_us};
use crate::ingest::json_spans::{
    Member, ObjectError, array_items, checked_object_members, member, object_members,
};

/// Request-level keys that each event of a batch inherits when it lacks them.
const INHERITED_KEYS: [&str; 3] = ["sent_at", "now", "_received_at"];

/// What a raw capture record lends the event in its `data`.
const RAW_RECORD_KEYS: [&str; 5] = ["sent_at", "now", "_received_at", "uuid", "distinct_id"];

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

/// An event that could not be ingested: why, and its own text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedEvent {
    /// What is wrong with it.
    pub reason: String,
    /// The event's text (the batch item, or the whole line).
    pub raw: String,
}

/// The events of one line, each handed to `on_event` with its position in
/// the batch (for batch bodies); an error for the whole line when it is not
/// valid JSON, not an object, or its batch is not an array.
pub fn line_events(
    line: &str,
    default_received_us: Option<i64>,
    mut on_event: impl FnMut(Option<usize>, Result<EventRow, RejectedEvent>),
) -> Result<(), String> {
    let members = checked_object_members(line).map_err(|error| refusal(error, line))?;
    let reject = |reason: String, raw: &str| RejectedEvent {
        reason,
        raw: raw.to_string(),
    };
    let batch = match member(&members, "batch") {
        Some(batch) => Some(batch),
        None => member(&members, "data").filter(|data| data.starts_with('[')),
    };
    if let Some(batch) = batch {
        let Some(items) = array_items(batch) else {
            return Err("'batch' must be an array of events".into());
        };
        let inherited = only_keys(&members, &INHERITED_KEYS);
        for (index, item) in items.into_iter().enumerate() {
            let event = match object_members(item) {
                Some(event) => event_row(&event, &inherited, default_received_us)
                    .map_err(|reason| reject(reason, item)),
                None => Err(reject("batch item is not a JSON object".into(), item)),
            };
            on_event(Some(index), event);
        }
        return Ok(());
    }
    if let Some(data) = member(&members, "data").filter(|data| data.starts_with('"')) {
        let inherited = only_keys(&members, &RAW_RECORD_KEYS);
        on_event(
            None,
            raw_capture_record(data, &inherited, default_received_us)
                .map_err(|reason| reject(reason, line)),
        );
        return Ok(());
    }
    on_event(
        None,
        event_row(&members, &[], default_received_us).map_err(|reason| reject(reason, line)),
    );
    Ok(())
}

fn only_keys<'a>(members: &[Member<'a>], keys: &[&str]) -> Vec<Member<'a>> {
    members
        .iter()
        .filter(|(key, _)| keys.contains(&key.as_ref()))
        .cloned()
        .collect()
}

/// A raw capture record: the event is the JSON text in `data`.
fn raw_capture_record(
    data: &str,
    inherited: &[Member<'_>],
    default_received_us: Option<i64>,
) -> Result<EventRow, String> {
    let text = decode_string(data).map_err(|_| "'data' is not a JSON string".to_string())?;
    let event = checked_object_members(&text)
        .map_err(|error| format!("'data' is {}", refusal(error, &text)))?;
    event_row(&event, inherited, default_received_us)
}

/// Why `text` is not an event object, for the quarantine: "not a JSON
/// object", or "not valid JSON (…)" with what `serde_json` says is wrong (the
/// line reader only knows that something is).
fn refusal(error: ObjectError, text: &str) -> String {
    match error {
        ObjectError::NotAnObject => "not a JSON object".to_string(),
        ObjectError::InvalidJson => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Err(error) => format!("not valid JSON ({error})"),
            Ok(_) => "not valid JSON (refused by the line reader)".to_string(),
        },
    }
}

/// Maps one PostHog event onto an events row. `inherited` are request-level
/// members used when the event lacks them; `default_received_us` is the
/// receive time when neither carries one.
pub fn event_row(
    event: &[Member<'_>],
    inherited: &[Member<'_>],
    default_received_us: Option<i64>,
) -> Result<EventRow, String> {
    let get = |key: &str| {
        member(event, key)
            .or_else(|| member(inherited, key))
            .filter(|raw| *raw != "null")
    };
    let name = required_text(get("event"), "event")?;
    let distinct_id = required_text(get("distinct_id"), "distinct_id")?;
    let properties_raw = match get("properties") {
        None => None,
        Some(raw) if raw.starts_with('{') => Some(raw),
        Some(raw) => return Err(format!("'properties' must be a JSON object, got {raw}")),
    };
    let properties = match properties_raw {
        Some(raw) => object_members(raw).ok_or("'properties' is not a JSON object")?,
        None => Vec::new(),
    };
    let received_at_us = match time(get("now"), "now")? {
        Some(now) => Some(now),
        None => time(get("_received_at"), "_received_at")?.or(default_received_us),
    };
    // PostHog ignores a `sent_at` it cannot read rather than dropping the event.
    let sent_at_us = time(get("sent_at"), "sent_at").ok().flatten();
    let offset_ms = match get("offset") {
        None => None,
        Some(raw) => match raw.parse::<f64>() {
            Ok(offset) if offset.is_finite() => Some(offset as i64),
            _ => return Err(format!("'offset' must be milliseconds, got {raw}")),
        },
    };
    let timestamp_us = event_time_us(EventTimeFields {
        timestamp_us: time(get("timestamp"), "timestamp")?,
        sent_at_us,
        offset_ms,
        received_at_us,
        ignore_sent_at: member(&properties, "$ignore_sent_at") == Some("true"),
    })?;

    let extras: Vec<&Member<'_>> = event
        .iter()
        .filter(|(key, _)| !CONSUMED_KEYS.contains(&key.as_ref()))
        .filter(|(key, _)| member(&properties, key).is_none())
        .collect();
    let properties_text = properties_text(properties_raw, properties.is_empty(), &extras);
    let uuid = match get("uuid") {
        Some(raw) if raw.starts_with('"') => {
            Some(decode_string(raw)?).filter(|uuid| !uuid.trim().is_empty())
        }
        None => None,
        Some(raw) => return Err(format!("'uuid' must be a string, got {raw}")),
    };
    let uuid = uuid.unwrap_or_else(|| {
        derived_event_uuid(
            &name,
            &distinct_id,
            timestamp_us,
            properties_text.as_deref().unwrap_or_default(),
        )
    });
    // One pass over the properties, the last of a repeated key winning.
    let mut column_values: [Option<&str>; POSTHOG_PROPERTY_KEYS.len()] = Default::default();
    for (key, value) in &properties {
        if let Some(column) = property_column(key) {
            column_values[column] = Some(value);
        }
    }
    let mut optional: [Option<String>; OPTIONAL_STRING_COLUMNS.len()] = Default::default();
    for (slot, value) in optional.iter_mut().zip(column_values) {
        *slot = match value {
            None | Some("null") => None,
            Some(raw) if raw.starts_with('"') => Some(decode_string(raw)?),
            Some(raw) => Some(raw.to_string()),
        };
    }
    optional[PROPERTIES_INDEX] = properties_text;
    Ok(EventRow {
        required: [uuid, name, distinct_id],
        timestamp_us,
        optional,
    })
}

/// The index in [`POSTHOG_PROPERTY_KEYS`] of the property `key`, if it
/// becomes a column. Written out as a `match` so that the compiler compares
/// lengths and fixed-size words instead of looping over the list (every
/// property of every event passes here).
fn property_column(key: &str) -> Option<usize> {
    Some(match key {
        "$session_id" => 0,
        "$current_url" => 1,
        "$pathname" => 2,
        "$host" => 3,
        "$referrer" => 4,
        "$referring_domain" => 5,
        "utm_source" => 6,
        "utm_medium" => 7,
        "utm_campaign" => 8,
        "utm_term" => 9,
        "utm_content" => 10,
        "gclid" => 11,
        "gad_source" => 12,
        "fbclid" => 13,
        "$external_click_url" => 14,
        _ => return None,
    })
}

/// `properties` as stored: the event's own text, with top-level keys that
/// are not columns added (nothing is lost); `None` when there is nothing.
fn properties_text(raw: Option<&str>, empty: bool, extras: &[&Member<'_>]) -> Option<String> {
    if extras.is_empty() {
        return raw.filter(|_| !empty).map(str::to_string);
    }
    let mut text = match raw {
        Some(raw) if !empty => {
            let mut text = raw.trim_end().strip_suffix('}').unwrap_or(raw).to_string();
            text.push(',');
            text
        }
        _ => String::from("{"),
    };
    for (index, (key, value)) in extras.iter().enumerate() {
        if index > 0 {
            text.push(',');
        }
        text.push_str(&serde_json::Value::from(key.as_ref()).to_string());
        text.push(':');
        text.push_str(value);
    }
    text.push('}');
    Some(text)
}

/// The text of a JSON string value.
fn decode_string(raw: &str) -> Result<String, String> {
    match raw
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
    {
        Some(inner) if memchr::memchr(b'\\', inner.as_bytes()).is_none() => Ok(inner.to_string()),
        _ => serde_json::from_str(raw).map_err(|error| format!("bad string {raw}: {error}")),
    }
}

/// A required identifying field: a non-empty string (a number for `distinct_id`).
fn required_text(raw: Option<&str>, key: &str) -> Result<String, String> {
    match raw {
        None => Err(format!("missing required field '{key}'")),
        Some(raw) if raw.starts_with('"') => {
            let text = decode_string(raw)?;
            if text.trim().is_empty() {
                Err(format!("field '{key}' is empty"))
            } else {
                Ok(text)
            }
        }
        Some(raw) if key == "distinct_id" && raw.parse::<f64>().is_ok() => Ok(raw.to_string()),
        Some(raw) => Err(format!("field '{key}' must be a string, got {raw}")),
    }
}

/// A time field: an ISO 8601 string (its offset respected) or epoch milliseconds.
fn time(raw: Option<&str>, key: &str) -> Result<Option<i64>, String> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.starts_with('"') => parse_timestamp_us(&decode_string(raw)?)
            .map(Some)
            .map_err(|reason| format!("unparseable '{key}': {reason}")),
        Some(raw) => match raw.parse::<f64>() {
            Ok(millis) if millis.is_finite() => Ok(Some((millis * 1000.0) as i64)),
            _ => Err(format!("unparseable '{key}': {raw}")),
        },
    }
}

/// The id of an event that came without one: the same event content always
/// gets the same id, so re-ingesting it is recognised as a duplicate.
fn derived_event_uuid(
    name: &str,
    distinct_id: &str,
    timestamp_us: i64,
    properties: &str,
) -> String {
    let mut key = Vec::with_capacity(name.len() + distinct_id.len() + properties.len() + 2);
    for part in [name, distinct_id, properties] {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    uuid_v7_from_key(timestamp_us, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(line: &str) -> Vec<(Option<usize>, Result<EventRow, RejectedEvent>)> {
        let mut events = Vec::new();
        line_events(line, None, |item, event| events.push((item, event))).unwrap();
        events
    }

    #[test]
    fn properties_fill_the_columns_and_stay_whole() {
        let events = events_of(
            r#"{"uuid": "u1", "event": "$pageview", "distinct_id": "d1",
                "timestamp": "2024-01-01T00:00:00Z", "ip": "10.0.0.1", "api_key": "phc_secret",
                "properties": {"$session_id": "s1", "$current_url": "https://a.com/x",
                               "utm_source": "news", "gad_source": 1, "$browser": "Fire\"fox"}}"#,
        );
        let row = events[0].1.clone().unwrap();
        assert_eq!(row.required, ["u1", "$pageview", "d1"].map(String::from));
        assert_eq!(row.optional[0].as_deref(), Some("s1"));
        assert_eq!(row.optional[1].as_deref(), Some("https://a.com/x"));
        assert_eq!(row.optional[6].as_deref(), Some("news"));
        assert_eq!(row.optional[12].as_deref(), Some("1"));
        let properties: serde_json::Value =
            serde_json::from_str(row.optional[PROPERTIES_INDEX].as_deref().unwrap()).unwrap();
        assert_eq!(properties["$browser"], "Fire\"fox");
        assert_eq!(properties["ip"], "10.0.0.1");
        assert!(properties.get("api_key").is_none());
    }

    #[test]
    fn batch_items_inherit_the_request_times() {
        let events = events_of(
            r#"{"api_key": "k", "sent_at": "2024-01-01T00:00:10Z", "now": "2024-01-01T00:00:00Z",
                "batch": [{"event": "a", "distinct_id": "d", "timestamp": "2024-01-01T00:00:10Z"}, 7]}"#,
        );
        assert_eq!(events.len(), 2);
        let (item, first) = &events[0];
        assert_eq!(*item, Some(0));
        assert_eq!(first.as_ref().unwrap().timestamp_us, 1_704_067_200_000_000);
        assert_eq!(
            events[1],
            (
                Some(1),
                Err(RejectedEvent {
                    reason: "batch item is not a JSON object".into(),
                    raw: "7".into()
                })
            )
        );
    }

    #[test]
    fn property_columns_follow_the_schema_list() {
        for (index, key) in POSTHOG_PROPERTY_KEYS.iter().enumerate() {
            assert_eq!(property_column(key), Some(index), "{key}");
        }
        assert_eq!(property_column("$browser"), None);
    }

    #[test]
    fn a_repeated_property_takes_its_last_value() {
        let events = events_of(
            r#"{"event": "a", "distinct_id": "d", "timestamp": "2024-01-01T00:00:00Z",
                "properties": {"$pathname": "/first", "$host": null, "$pathname": "/last"}}"#,
        );
        let row = events[0].1.clone().unwrap();
        assert_eq!(row.optional[2].as_deref(), Some("/last"));
        assert_eq!(row.optional[3], None);
    }

    #[test]
    fn events_without_uuid_get_the_same_id_every_time() {
        let line = r#"{"event": "a", "distinct_id": "d", "timestamp": "2024-01-01T00:00:00Z"}"#;
        let first = events_of(line)[0].1.clone().unwrap();
        let second = events_of(line)[0].1.clone().unwrap();
        assert_eq!(first.required[0], second.required[0]);
        assert!(first.required[0].starts_with("018cc251-f400-7"));
    }
}
