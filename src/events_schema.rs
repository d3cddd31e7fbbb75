//! The `events` table's columns: the well-known event properties as columns,
//! everything else as JSON in `properties`.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sessionql_udfs::timestamp_us_utc;

/// Columns every event must have (not null).
pub const REQUIRED_COLUMNS: [&str; 4] = ["uuid", "event", "distinct_id", "timestamp"];

/// Optional string columns, in schema order, after the required ones.
pub const OPTIONAL_STRING_COLUMNS: [&str; 16] = [
    "session_id",
    "current_url",
    "pathname",
    "host",
    "referrer",
    "referring_domain",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "gclid",
    "gad_source",
    "fbclid",
    "external_click_url",
    "properties",
];

static EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new("uuid", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, false),
        Field::new("distinct_id", DataType::Utf8, false),
        Field::new("timestamp", timestamp_us_utc(), false),
    ];
    fields.extend(
        OPTIONAL_STRING_COLUMNS
            .iter()
            .map(|name| Field::new(*name, DataType::Utf8, true)),
    );
    Arc::new(Schema::new(fields))
});

/// The schema of the `events` table.
pub fn events_schema() -> SchemaRef {
    Arc::clone(&EVENTS_SCHEMA)
}

/// The PostHog event property each optional column is read from when events
/// arrive in PostHog's own shape (`sessionql ingest`), in
/// [`OPTIONAL_STRING_COLUMNS`] order; `properties` itself keeps them all.
pub const POSTHOG_PROPERTY_KEYS: [&str; OPTIONAL_STRING_COLUMNS.len() - 1] = [
    "$session_id",
    "$current_url",
    "$pathname",
    "$host",
    "$referrer",
    "$referring_domain",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "gclid",
    "gad_source",
    "fbclid",
    "$external_click_url",
];
