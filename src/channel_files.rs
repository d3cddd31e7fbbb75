//! Reading the channel files that `sessionql.channel_definitions` and
//! `sessionql.channel_rules` name: the I/O half of the channel functions, which
//! live in `sessionql-udfs` and do none. Parsed files are cached by path and
//! modification time, so a query does not re-read them per batch, and an edited
//! file is picked up by the next query.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sessionql_udfs::ChannelTableSource;
use sessionql_udfs::channel_lookup::ChannelLookup;
use sessionql_udfs::channel_rules::{ChannelRule, parse_rules};

/// A parsed file and the modification time it was parsed at.
type Cached<T> = (Option<SystemTime>, Arc<T>);

/// Reads and caches channel files for one engine.
#[derive(Debug, Default)]
pub struct ChannelFiles {
    definitions: Mutex<HashMap<String, Cached<ChannelLookup>>>,
    rules: Mutex<HashMap<String, Cached<Vec<ChannelRule>>>>,
}

fn read_cached<T>(
    cache: &Mutex<HashMap<String, Cached<T>>>,
    path: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Arc<T>, String> {
    let modified = std::fs::metadata(Path::new(path))
        .map_err(|error| format!("{path}: {error}"))?
        .modified()
        .ok();
    if let Ok(cache) = cache.lock()
        && let Some((cached_at, value)) = cache.get(path)
        && *cached_at == modified
        && modified.is_some()
    {
        return Ok(Arc::clone(value));
    }
    let text = std::fs::read_to_string(path).map_err(|error| format!("{path}: {error}"))?;
    let value = Arc::new(parse(&text).map_err(|error| format!("{path}: {error}"))?);
    if let Ok(mut cache) = cache.lock() {
        cache.insert(path.to_string(), (modified, Arc::clone(&value)));
    }
    Ok(value)
}

impl ChannelTableSource for ChannelFiles {
    fn definitions(&self, path: &str) -> Result<Arc<ChannelLookup>, String> {
        read_cached(&self.definitions, path, ChannelLookup::parse_posthog_json)
    }

    fn rules(&self, path: &str) -> Result<Arc<Vec<ChannelRule>>, String> {
        read_cached(&self.rules, path, parse_rules)
    }
}
