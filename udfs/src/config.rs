//! The `sessionql.*` settings: the numbers of the session definition that users
//! may change with `SET sessionql.… = …` or through the library API.
//!
//! The settings live in DataFusion's [`ConfigOptions`] as a [`ConfigExtension`],
//! so every function reads them from the session that runs the query, never from
//! process-global state. That keeps one process able to serve clients with
//! different settings, and lets cluster executors receive them with the plan.

use std::any::Any;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::common::{DataFusionError, Result};

/// A derived session ends when the next event comes *more than* this many seconds
/// after the previous one (spec §1: 30 minutes).
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 1800;

/// A derived session ends when an event comes *more than* this many seconds after
/// the session's first event (spec §1: 24 hours).
pub const DEFAULT_MAX_DURATION_SECONDS: u64 = 86_400;

/// A session with one pageview or screen, no autocapture and a duration below
/// this many seconds is a bounce (spec §3: 10 seconds).
pub const DEFAULT_BOUNCE_DURATION_SECONDS: u64 = 10;

/// Session definition settings, under the `sessionql.` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionqlConfig {
    /// Idle gap, in seconds, after which a derived session ends.
    pub session_idle_timeout_seconds: u64,
    /// Longest span, in seconds, of a derived session.
    pub session_max_duration_seconds: u64,
    /// Sessions lasting at least this many seconds are never bounces.
    pub bounce_duration_seconds: u64,
    /// Path of a channel table in PostHog's JSON format replacing the
    /// built-in source and medium lists; empty for the built-in lists.
    pub channel_definitions: String,
    /// Path of a JSON list of custom channel rules tried before the
    /// built-in rules; empty for none.
    pub channel_rules: String,
    /// Whether time filters on `sessions.start_timestamp` also filter the
    /// events read, widened by the longest session and the idle timeout.
    pub session_time_filter_pushdown: bool,
}

impl Default for SessionqlConfig {
    fn default() -> Self {
        SessionqlConfig {
            session_idle_timeout_seconds: DEFAULT_IDLE_TIMEOUT_SECONDS,
            session_max_duration_seconds: DEFAULT_MAX_DURATION_SECONDS,
            bounce_duration_seconds: DEFAULT_BOUNCE_DURATION_SECONDS,
            channel_definitions: String::new(),
            channel_rules: String::new(),
            session_time_filter_pushdown: true,
        }
    }
}

impl ConfigExtension for SessionqlConfig {
    const PREFIX: &'static str = "sessionql";
}

/// Written by hand rather than with DataFusion's `extensions_options!`, whose
/// entries leave out the prefix: Ballista sends a session's settings to the
/// scheduler and executors as `entries()` and sets them back by key, so a key
/// without `sessionql.` would be dropped there and executors would run with
/// the defaults.
impl ExtensionOptions for SessionqlConfig {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let seconds = || {
            value.trim().parse::<u64>().map_err(|_| {
                DataFusionError::Configuration(format!(
                    "sessionql.{key} must be a whole number of seconds, got '{value}'"
                ))
            })
        };
        match key {
            "session_idle_timeout_seconds" => self.session_idle_timeout_seconds = seconds()?,
            "session_max_duration_seconds" => self.session_max_duration_seconds = seconds()?,
            "bounce_duration_seconds" => self.bounce_duration_seconds = seconds()?,
            "channel_definitions" => self.channel_definitions = value.to_string(),
            "channel_rules" => self.channel_rules = value.to_string(),
            "session_time_filter_pushdown" => {
                self.session_time_filter_pushdown = value.trim().parse::<bool>().map_err(|_| {
                    DataFusionError::Configuration(format!(
                        "sessionql.{key} must be true or false, got '{value}'"
                    ))
                })?;
            }
            _ => {
                return Err(DataFusionError::Configuration(format!(
                    "unknown setting sessionql.{key}; known: {}",
                    SETTINGS
                        .iter()
                        .map(|(name, _)| format!("sessionql.{name}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        SETTINGS
            .iter()
            .map(|(name, description)| ConfigEntry {
                key: format!("{}.{name}", Self::PREFIX),
                value: Some(match *name {
                    "session_idle_timeout_seconds" => self.session_idle_timeout_seconds.to_string(),
                    "session_max_duration_seconds" => self.session_max_duration_seconds.to_string(),
                    "bounce_duration_seconds" => self.bounce_duration_seconds.to_string(),
                    "channel_definitions" => self.channel_definitions.clone(),
                    "session_time_filter_pushdown" => self.session_time_filter_pushdown.to_string(),
                    _ => self.channel_rules.clone(),
                }),
                description,
            })
            .collect()
    }
}

/// Every setting with its description, in the order `SHOW ALL` lists them.
const SETTINGS: [(&str, &str); 6] = [
    (
        "session_idle_timeout_seconds",
        "Idle gap, in seconds, after which a derived session ends.",
    ),
    (
        "session_max_duration_seconds",
        "Longest span, in seconds, of a derived session.",
    ),
    (
        "bounce_duration_seconds",
        "Sessions lasting at least this many seconds are never bounces.",
    ),
    (
        "channel_definitions",
        "Path of a channel table in PostHog's JSON format replacing the built-in source and medium lists; empty for the built-in lists.",
    ),
    (
        "channel_rules",
        "Path of a JSON list of custom channel rules tried before the built-in rules; empty for none.",
    ),
    (
        "session_time_filter_pushdown",
        "Whether filters on sessions.start_timestamp also filter the events read, widened by the longest session and the idle timeout.",
    ),
];

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

#[cfg(test)]
mod tests {
    use super::*;

    /// What a cluster does with a session's settings: list the entries,
    /// send them by key, set them on a fresh configuration.
    #[test]
    fn entries_carry_the_prefix_and_set_back_to_the_same_settings() {
        let settings = SessionqlConfig {
            session_idle_timeout_seconds: 600,
            session_max_duration_seconds: 7200,
            bounce_duration_seconds: 60,
            channel_definitions: "defs.json".into(),
            channel_rules: "rules.json".into(),
            session_time_filter_pushdown: false,
        };
        let mut options = ConfigOptions::new();
        options.extensions.insert(settings.clone());
        let mut received = ConfigOptions::new();
        received.extensions.insert(SessionqlConfig::default());
        let mut sent = 0;
        for entry in options.entries() {
            if entry.key.starts_with("sessionql.") {
                received
                    .set(&entry.key, entry.value.as_deref().unwrap_or_default())
                    .unwrap_or_else(|error| panic!("{}: {error}", entry.key));
                sent += 1;
            }
        }
        assert_eq!(sent, 6);
        assert_eq!(SessionqlConfig::from_options(&received), settings);
    }

    #[test]
    fn bad_values_and_unknown_keys_are_named() {
        let mut options = ConfigOptions::new();
        options.extensions.insert(SessionqlConfig::default());
        let error = options
            .set("sessionql.bounce_duration_seconds", "ten")
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("sessionql.bounce_duration_seconds"),
            "{error}"
        );
        assert!(error.contains("'ten'"), "{error}");
        let error = options
            .set("sessionql.no_such_setting", "1")
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("sessionql.no_such_setting"), "{error}");
    }
}
