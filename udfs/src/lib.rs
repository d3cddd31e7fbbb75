//! Sessionization and session-property functions for DataFusion.
//!
//! This crate holds every function sessionql adds to SQL, and nothing else: no
//! I/O, no tables, no process-global state. The local engine, and later the
//! scheduler and executors of a cluster, all call [`register_all`], so a plan
//! that names one of these functions runs the same wherever it lands.
//!
//! | function | kind | spec |
//! |---|---|---|
//! | `session_start` | window | §1 derived sessions |
//! | `session_uuid` | scalar | §1 derived session id |
//! | `entry_value`, `exit_value` | aggregate | §2 prio-first / prio-last |
//! | `entry_channel_type` | aggregate | §2, §4 channel of the entry event |
//! | `count_distinct_where`, `distinct_strings_where` | aggregate | §2 distinct counts, `urls` |
//! | `session_duration` | scalar | §2 duration |
//! | `url_pathname`, `url_hostname` | scalar | §2 URL parts |
//! | `blank_to_null` | scalar | §2 empty and `'null'` strings |
//! | `session_is_bounce` | scalar | §3 bounce |
//! | `channel_type`, `referring_domain_type` | scalar | §4 channel type |
//! | `session_length_bucket`, `session_length_bucket_order` | scalar | §5 buckets |
//! | `date_trunc` | scalar | DataFusion's, with arithmetic truncation of UTC timestamps |
//!
//! Settings (`SET sessionql.session_idle_timeout_seconds = 600`) are read from
//! the running session through [`config::SessionqlConfig`].

pub mod args;
pub mod blank_to_null;
pub mod channel_lookup;
pub mod channel_rules;
pub mod channel_tables;
pub mod channel_type;
pub mod config;
pub mod count_distinct_where;
pub mod date_trunc_utc;
pub mod dedup_groups;
pub mod distinct_strings_where;
pub mod distinct_where;
pub mod entry_channel_type;
pub mod entry_exit_value;
pub mod pick_slots;
pub mod referring_domain_type;
pub mod session_duration;
pub mod session_event_counts;
pub mod session_is_bounce;
pub mod session_length_bucket;
pub mod session_start;
pub mod session_uuid;
pub mod stable_hash;
pub mod string_map;
pub mod url_parts;

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::Result;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};

pub use channel_tables::{ChannelTableSource, ChannelTables};
pub use config::SessionqlConfig;

/// Microseconds in a second: `events.timestamp` is in microseconds.
pub const MICROS_PER_SECOND: i64 = 1_000_000;

/// The type of `events.timestamp`: microseconds since the epoch, UTC.
pub fn timestamp_us_utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Every scalar function of this crate; the channel functions read
/// user-supplied tables through `channel_tables`.
pub fn scalar_udfs(channel_tables: Arc<ChannelTables>) -> Vec<Arc<ScalarUDF>> {
    vec![
        session_uuid::session_uuid_udf(),
        session_duration::session_duration_udf(),
        url_parts::url_pathname_udf(),
        url_parts::url_hostname_udf(),
        blank_to_null::blank_to_null_udf(),
        session_is_bounce::session_is_bounce_udf(),
        channel_type::channel_type_udf(Arc::clone(&channel_tables)),
        referring_domain_type::referring_domain_type_udf(channel_tables),
        session_length_bucket::session_length_bucket_udf(),
        session_length_bucket::session_length_bucket_order_udf(),
        date_trunc_utc::date_trunc_udf(),
    ]
}

/// Every aggregate function of this crate; `entry_channel_type` reads
/// user-supplied channel tables through `channel_tables`.
pub fn aggregate_udfs(channel_tables: Arc<ChannelTables>) -> Vec<Arc<AggregateUDF>> {
    vec![
        entry_channel_type::entry_channel_type_udaf(channel_tables),
        entry_exit_value::entry_value_udaf(),
        entry_exit_value::exit_value_udaf(),
        count_distinct_where::count_distinct_where_udaf(),
        session_event_counts::session_event_counts_udaf(),
        distinct_strings_where::distinct_strings_where_udaf(),
    ]
}

/// Every window function of this crate.
pub fn window_udfs() -> Vec<Arc<WindowUDF>> {
    vec![session_start::session_start_udwf()]
}

/// Registers every function of this crate, with the built-in channel table
/// only (a setting naming a channel file is refused).
pub fn register_all(registry: &mut dyn FunctionRegistry) -> Result<()> {
    register_all_with_channel_source(registry, None)
}

/// Registers every function of this crate; the one entry point for engines,
/// schedulers and executors. `channel_source` reads the channel files that
/// `sessionql.channel_definitions` and `sessionql.channel_rules` name.
pub fn register_all_with_channel_source(
    registry: &mut dyn FunctionRegistry,
    channel_source: Option<Arc<dyn ChannelTableSource>>,
) -> Result<()> {
    let channel_tables = Arc::new(ChannelTables::new(channel_source));
    for udf in scalar_udfs(Arc::clone(&channel_tables)) {
        registry.register_udf(udf)?;
    }
    for udaf in aggregate_udfs(channel_tables) {
        registry.register_udaf(udaf)?;
    }
    for udwf in window_udfs() {
        registry.register_udwf(udwf)?;
    }
    Ok(())
}
