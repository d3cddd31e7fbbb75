//! The `events` table's columns: the well-known event properties as columns,
//! everything else as JSON in `properties`.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
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

/// String columns the `events` table hands on as `Utf8View` rather than
/// `Utf8`: the two whose values repeat most, row after row (a session's
/// id on each of its events, a dozen event names over millions of rows).
/// Parquet stores them dictionary-encoded, and a view reads each value as a
/// 16-byte reference into the page's dictionary instead of copying its
/// bytes out for every row (`count(DISTINCT session_id) … GROUP BY event`
/// at 10M events: 1.16 → 0.96 s of CPU). Other string columns are
/// mostly arguments of sessionql's functions, which read `Utf8`, so they
/// stay `Utf8` (a view there would only be cast back).
pub const VIEW_STRING_COLUMNS: [&str; 2] = ["event", "session_id"];

static EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields = STORED_EVENTS_SCHEMA.fields().iter().map(|field| {
        if VIEW_STRING_COLUMNS.contains(&field.name().as_str()) {
            Arc::new(field.as_ref().clone().with_data_type(DataType::Utf8View))
        } else {
            Arc::clone(field)
        }
    });
    Arc::new(Schema::new(fields.collect::<Vec<_>>()))
});

static STORED_EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
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

/// The schema of the `events` table, as queries see it: the stored
/// schema with [`VIEW_STRING_COLUMNS`] as `Utf8View`.
pub fn events_schema() -> SchemaRef {
    Arc::clone(&EVENTS_SCHEMA)
}

/// The schema of events as sessionql writes them (`generate`, `ingest`)
/// and builds them from NDJSON or CSV rows: every string column `Utf8`, the
/// type any Parquet reader (DuckDB, pandas, Spark) expects.
pub fn stored_events_schema() -> SchemaRef {
    Arc::clone(&STORED_EVENTS_SCHEMA)
}

/// A batch of the stored schema in the `events` table's types (its
/// [`VIEW_STRING_COLUMNS`] cast to views, which copies no string bytes).
pub fn to_events_schema(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = events_schema();
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| cast(column, field.data_type()))
        .collect::<Result<Vec<ArrayRef>, ArrowError>>()?;
    RecordBatch::try_new(schema, columns)
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
