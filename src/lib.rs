//! sessionql: session analytics in plain SQL on Apache DataFusion.
//!
//! The engine is a library first: [`Engine::builder`] returns a configured
//! DataFusion session with an `events` table, the virtual `sessions` and
//! `session_events` relations, and every sessionql function. The CLI (and any
//! server) is a thin door over it.

pub mod bench;
pub mod channel_files;
pub mod cli;
pub mod complete_files;
pub mod distinct_counts;
pub mod distinct_keys;
#[cfg(feature = "distributed")]
pub mod distributed;
pub mod engine;
pub mod error;
pub mod event_rows;
pub mod events_schema;
pub mod events_table;
pub mod flight;
pub mod generate;
pub mod ingest;
pub mod listen;
pub mod one_phase_sessions;
pub mod output;
pub mod plan_rewrite;
pub mod postgres;
pub mod repeated_keys;
pub mod run_sort;
pub mod scan_filters;
pub mod session_start_in_place;
pub mod session_time_filter;
pub mod session_views;
pub mod shell;
pub mod unshuffled_distinct_counts;
pub mod whole_partition;

pub use engine::{
    Engine, EngineBuilder, isolated_session, run_statements, session_context, use_events_table,
};
pub use error::{Result, SessionqlError};
pub use sessionql_udfs::SessionqlConfig;
