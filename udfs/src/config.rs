//! The `sessionql.*` settings: the numbers of the session definition that users
//! may change with `SET sessionql.… = …` or through the library API.
//!
//! The settings live in DataFusion's [`ConfigOptions`] as a [`ConfigExtension`],
//! so every function reads them from the session that runs the query, never from
//! process-global state. That keeps one process able to serve clients with
//! different settings, and lets cluster executors receive them with the plan.

use datafusion::common::config::{ConfigExtension, ConfigOptions};
use datafusion::common::extensions_options;

/// A derived session ends when the next event comes *more than* this many seconds
/// after the previous one (spec §1: 30 minutes).
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 1800;

/// A derived session ends when an event comes *more than* this many seconds after
/// the session's first event (spec §1: 24 hours).
pub const DEFAULT_MAX_DURATION_SECONDS: u64 = 86_400;

/// A session with one pageview or screen, no autocapture and a duration below
/// this many seconds is a bounce (spec §3: 10 seconds).
pub const DEFAULT_BOUNCE_DURATION_SECONDS: u64 = 10;

extensions_options! {
    /// Session definition settings, under the `sessionql.` prefix.
    pub struct SessionqlConfig {
        /// Idle gap, in seconds, after which a derived session ends.
        pub session_idle_timeout_seconds: u64, default = DEFAULT_IDLE_TIMEOUT_SECONDS
        /// Longest span, in seconds, of a derived session.
        pub session_max_duration_seconds: u64, default = DEFAULT_MAX_DURATION_SECONDS
        /// Sessions lasting at least this many seconds are never bounces.
        pub bounce_duration_seconds: u64, default = DEFAULT_BOUNCE_DURATION_SECONDS
        /// Path of a channel table in PostHog's JSON format replacing the
        /// built-in source and medium lists; empty for the built-in lists.
        pub channel_definitions: String, default = String::new()
        /// Path of a JSON list of custom channel rules tried before the
        /// built-in rules; empty for none.
        pub channel_rules: String, default = String::new()
    }
}

impl ConfigExtension for SessionqlConfig {
    const PREFIX: &'static str = "sessionql";
}

impl SessionqlConfig {
    /// The settings of a session, or the defaults when the session was created
    /// without the extension (a plain `SessionContext` calling our functions).
    pub fn from_options(options: &ConfigOptions) -> SessionqlConfig {
        options
            .extensions
            .get::<SessionqlConfig>()
            .cloned()
            .unwrap_or_default()
    }
}
