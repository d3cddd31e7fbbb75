//! The `session_events` and `sessions` relations, as views over `events`.
//!
//! They are plain SQL over sessionql's functions, so DataFusion optimises them
//! with the query around them: `SELECT count(*) FROM sessions` drops every
//! aggregate it does not need, and settings changed with `SET sessionql.…` are
//! read when the next query is planned (see `session_start`'s `simplify`).

use datafusion::prelude::SessionContext;

use crate::error::Result;

/// Condition for events whose SDK gave a session id: a non-empty string
/// other than `'null'` (spec §1). Such sessions are never re-split.
///
/// Written out (not as `blank_to_null(session_id) IS NOT NULL`) so that
/// Parquet statistics can answer it: a row group with no null, empty or
/// `'null'` id is skipped by the half that derives sessions, and one with
/// only nulls by the other half.
const HAS_GIVEN_SESSION_ID: &str =
    "session_id IS NOT NULL AND session_id <> '' AND session_id <> 'null'";

/// The negation of [`HAS_GIVEN_SESSION_ID`], in the same prunable form.
const HAS_NO_GIVEN_SESSION_ID: &str =
    "session_id IS NULL OR session_id = '' OR session_id = 'null'";

/// Columns of `events` after `session_id`, shared by both halves of the union.
const EVENT_COLUMNS_AFTER_SESSION_ID: &str = "current_url, pathname, host, referrer, referring_domain, \
     utm_source, utm_medium, utm_campaign, utm_term, utm_content, gclid, gad_source, fbclid, \
     external_click_url, properties";

/// Every event with its resolved `session_id`: the given id, or the id of the
/// derived session (spec §1) for events without one.
fn session_events_sql() -> String {
    format!(
        "SELECT uuid, event, distinct_id, timestamp, session_id, {rest}
         FROM events WHERE {HAS_GIVEN_SESSION_ID}
         UNION ALL
         SELECT uuid, event, distinct_id, timestamp,
                session_uuid(distinct_id,
                    session_start(timestamp) OVER (PARTITION BY distinct_id ORDER BY timestamp)
                ) AS session_id,
                {rest}
         FROM events WHERE {HAS_NO_GIVEN_SESSION_ID}",
        rest = EVENT_COLUMNS_AFTER_SESSION_ID
    )
}

/// One row per session with every property of spec §2.
///
/// Sessions are grouped by `session_id` cast to `Utf8` (`events` reads it
/// as a view, see `events_schema::VIEW_STRING_COLUMNS`): a batch of views is
/// charged the whole Parquet dictionary its views point into, so under a
/// memory limit the shuffle to the grouping spilled several times as much
/// (at 10M under 800 MB, 64 spills of 413 MB against one of 96 MB, the full
/// table 12.7 s against 10.6 s). The id is then a plain string, like every
/// other property, for BI tools and Flight SQL clients.
const SESSIONS_SQL: &str = "
SELECT
    session_id,
    distinct_id,
    start_timestamp,
    end_timestamp,
    session_duration(start_timestamp, end_timestamp) AS session_duration,
    entry_current_url,
    url_pathname(entry_current_url) AS entry_pathname,
    url_hostname(entry_current_url) AS entry_hostname,
    exit_current_url,
    url_pathname(exit_current_url) AS exit_pathname,
    url_hostname(exit_current_url) AS exit_hostname,
    entry_utm_source,
    entry_utm_medium,
    entry_utm_campaign,
    entry_utm_term,
    entry_utm_content,
    entry_referring_domain,
    entry_gclid,
    entry_gad_source,
    entry_fbclid,
    event_counts['pageview_count'] AS pageview_count,
    event_counts['autocapture_count'] AS autocapture_count,
    event_counts['screen_count'] AS screen_count,
    event_counts['event_count'] AS event_count,
    urls,
    num_uniq_urls,
    last_external_click_url,
    has_autocapture,
    channel_type,
    session_is_bounce(
        event_counts['pageview_count'] + event_counts['screen_count'],
        event_counts['autocapture_count'],
        session_duration(start_timestamp, end_timestamp)
    ) AS is_bounce
FROM (
    SELECT
        session_id,
        exit_value(distinct_id, false, timestamp, uuid) AS distinct_id,
        min(timestamp) AS start_timestamp,
        max(timestamp) AS end_timestamp,
        entry_value(current_url, is_page, timestamp, uuid) AS entry_current_url,
        exit_value(current_url, is_page, timestamp, uuid) AS exit_current_url,
        entry_value(blank_to_null(utm_source), is_page, timestamp, uuid) AS entry_utm_source,
        entry_value(blank_to_null(utm_medium), is_page, timestamp, uuid) AS entry_utm_medium,
        entry_value(blank_to_null(utm_campaign), is_page, timestamp, uuid) AS entry_utm_campaign,
        entry_value(blank_to_null(utm_term), is_page, timestamp, uuid) AS entry_utm_term,
        entry_value(blank_to_null(utm_content), is_page, timestamp, uuid) AS entry_utm_content,
        entry_value(referring_domain, is_page, timestamp, uuid) AS entry_referring_domain,
        entry_value(blank_to_null(gclid), is_page, timestamp, uuid) AS entry_gclid,
        entry_value(blank_to_null(gad_source), is_page, timestamp, uuid) AS entry_gad_source,
        entry_value(blank_to_null(fbclid), is_page, timestamp, uuid) AS entry_fbclid,
        session_event_counts(uuid, event) AS event_counts,
        distinct_strings_where(current_url, is_page) AS urls,
        count_distinct_where(current_url, is_page) AS num_uniq_urls,
        exit_value(external_click_url, false, timestamp, uuid) AS last_external_click_url,
        bool_or(event = '$autocapture') AS has_autocapture,
        entry_channel_type(
            utm_source, utm_medium, utm_campaign, referring_domain, gclid, fbclid, gad_source, current_url,
            is_page, timestamp, uuid
        ) AS channel_type
    FROM (
        SELECT * EXCLUDE (session_id), arrow_cast(session_id, 'Utf8') AS session_id,
            event IN ('$pageview', '$screen') AS is_page
        FROM session_events
    )
    GROUP BY session_id
)";

/// Registers (or replaces) `session_events` and `sessions` over the current
/// `events` table, which must exist already.
pub async fn register_session_views(context: &SessionContext) -> Result<()> {
    context
        .sql(&format!(
            "CREATE OR REPLACE VIEW session_events AS {}",
            session_events_sql()
        ))
        .await?;
    context
        .sql(&format!(
            "CREATE OR REPLACE VIEW sessions AS {SESSIONS_SQL}"
        ))
        .await?;
    Ok(())
}
