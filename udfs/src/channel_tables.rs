//! Which channel tables a query uses: the built-in lookup and no custom rules,
//! unless the session's settings name files (`SET sessionql.channel_definitions
//! = '/path/table.json'`, `SET sessionql.channel_rules = '/path/rules.json'`).
//!
//! This crate does no I/O, so reading those files is delegated to a
//! [`ChannelTableSource`] the engine supplies (and may cache). Functions built
//! without a source refuse a setting that names a file, with a clear error.

use std::fmt::Debug;
use std::sync::Arc;

use datafusion::common::{Result, exec_err};

use crate::channel_lookup::ChannelLookup;
use crate::channel_rules::ChannelRule;
use crate::config::SessionqlConfig;

/// Reads the user-supplied tables named by the settings.
pub trait ChannelTableSource: Debug + Send + Sync {
    /// The lookup table in PostHog's format at `path`; errors name the file and row.
    fn definitions(&self, path: &str) -> std::result::Result<Arc<ChannelLookup>, String>;
    /// The custom rules at `path`; errors name the file, rule and item.
    fn rules(&self, path: &str) -> std::result::Result<Arc<Vec<ChannelRule>>, String>;
}

/// The built-in table plus, optionally, a source for user-supplied ones.
#[derive(Debug)]
pub struct ChannelTables {
    built_in: std::result::Result<Arc<ChannelLookup>, String>,
    no_rules: Arc<Vec<ChannelRule>>,
    source: Option<Arc<dyn ChannelTableSource>>,
}

impl ChannelTables {
    /// Tables backed by `source` for user-supplied files (or none).
    pub fn new(source: Option<Arc<dyn ChannelTableSource>>) -> Self {
        Self {
            built_in: ChannelLookup::built_in().map(Arc::new),
            no_rules: Arc::new(Vec::new()),
            source,
        }
    }

    /// The lookup and rules for a query run with `config`.
    pub fn resolve(
        &self,
        config: &SessionqlConfig,
    ) -> Result<(Arc<ChannelLookup>, Arc<Vec<ChannelRule>>)> {
        let lookup = if config.channel_definitions.is_empty() {
            match &self.built_in {
                Ok(lookup) => Arc::clone(lookup),
                Err(error) => return exec_err!("built-in channel table: {error}"),
            }
        } else {
            self.read_from_source(|source| source.definitions(&config.channel_definitions))?
        };
        let rules = if config.channel_rules.is_empty() {
            Arc::clone(&self.no_rules)
        } else {
            self.read_from_source(|source| source.rules(&config.channel_rules))?
        };
        Ok((lookup, rules))
    }

    fn read_from_source<T>(
        &self,
        read: impl FnOnce(&dyn ChannelTableSource) -> std::result::Result<T, String>,
    ) -> Result<T> {
        match &self.source {
            Some(source) => match read(source.as_ref()) {
                Ok(value) => Ok(value),
                Err(error) => exec_err!("{error}"),
            },
            None => exec_err!(
                "sessionql.channel_definitions and sessionql.channel_rules need a session that can read files; \
                 register the functions with a ChannelTableSource"
            ),
        }
    }
}
